package llm

import (
	"encoding/json"
	"fmt"
)

// inputSchema is the JSON Schema of the input, published in the catalog;
// maxTokens is the cap on max_tokens.
func inputSchema(maxTokens int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "chat input",
  "description": "A conversation for an OpenAI-compatible chat model: messages, or the shorthand prompt (one user message). Request \"stream\": true to get the answer as text deltas.",
  "type": "object",
  "properties": {
    "messages": {
      "type": "array", "minItems": 1, "maxItems": %d,
      "items": {
        "type": "object",
        "properties": {
          "role": {"enum": ["system", "user", "assistant"]},
          "content": {"type": "string"}
        },
        "required": ["role", "content"],
        "additionalProperties": false
      },
      "description": "The conversation so far, oldest first."
    },
    "prompt": {"type": "string", "minLength": 1, "description": "Shorthand for one user message."},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": %d, "description": "Most tokens to generate; default and cap %d."},
    "temperature": {"type": "number", "minimum": 0, "maximum": %g, "description": "Sampling temperature; the backend's default when absent."}
  },
  "oneOf": [{"required": ["messages"]}, {"required": ["prompt"]}],
  "additionalProperties": false
}`, MaxMessages, maxTokens, maxTokens, MaxTemperature))
}

// outputSchema is the JSON Schema of the output, published in the catalog.
var outputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "chat output",
  "description": "The whole answer. A streamed request gets it in delta events first ({\"text\": \"...\"} each, in order), then this output in the done event.",
  "type": "object",
  "properties": {
    "text": {"type": "string", "description": "The generated text."},
    "finish_reason": {"type": "string", "description": "Why generation stopped, as the backend said: stop, length, ...; empty when it did not say."},
    "usage": {
      "type": "object",
      "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0}
      },
      "required": ["prompt_tokens", "completion_tokens", "total_tokens"]
    },
    "usage_estimated": {"type": "boolean", "description": "True when the backend sent no usage and it was estimated: completion tokens = deltas received, prompt tokens = prompt bytes / 4."},
    "model": {"type": "string", "description": "The model that answered, as the backend named it."}
  },
  "required": ["text", "finish_reason", "usage", "model"],
  "$defs": {
    "delta": {
      "type": "object",
      "properties": {"text": {"type": "string", "minLength": 1}},
      "required": ["text"]
    }
  }
}`)
