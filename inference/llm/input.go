package llm

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"

	"github.com/mqttinfer/mqttinfer/inference"
)

// MaxMessages is the most messages one input may hold.
const MaxMessages = 1024

// MaxTemperature is the highest temperature accepted, as in the OpenAI API.
const MaxTemperature = 2.0

// message is one chat message as the backend takes it.
type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// input is a decoded, validated input.
type input struct {
	messages    []message
	maxTokens   int      // 0: not given
	temperature *float64 // nil: not given (the backend's default)
}

// decodeInput decodes and validates an input; maxTokens is the cap on
// max_tokens. Every error is an inference.InvalidInput naming the field.
func decodeInput(raw, params json.RawMessage, maxTokens int) (input, error) {
	var in input
	if p := bytes.TrimSpace(params); len(p) > 0 && !bytes.Equal(p, []byte("null")) && !isEmptyObject(p) {
		return in, inference.InvalidInput("params: chat takes no params; put max_tokens and temperature in input")
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return in, inference.InvalidInput(`input is required: {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}`)
	}
	if k := kind(raw); k != "object" {
		return in, inference.InvalidInput("input must be a JSON object, got %s", a(k))
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return in, inference.InvalidInput("input is not valid JSON: %v", err)
	}
	for k := range fields {
		switch k {
		case "messages", "prompt", "max_tokens", "temperature":
		default:
			return in, inference.InvalidInput("input: unknown field %q (the fields are messages or prompt, max_tokens and temperature)", clip(k))
		}
	}

	mraw, hasMessages := fields["messages"]
	praw, hasPrompt := fields["prompt"]
	switch {
	case hasMessages && hasPrompt:
		return in, inference.InvalidInput("input: give either messages or prompt, not both")
	case hasPrompt:
		if k := kind(praw); k != "string" {
			return in, inference.InvalidInput("input.prompt must be a string, got %s", a(k))
		}
		var p string
		if err := json.Unmarshal(praw, &p); err != nil {
			return in, inference.InvalidInput("input.prompt is not a valid JSON string: %v", err)
		}
		if p == "" {
			return in, inference.InvalidInput("input.prompt is empty")
		}
		in.messages = []message{{Role: "user", Content: p}}
	case hasMessages:
		var err error
		if in.messages, err = decodeMessages(mraw); err != nil {
			return in, err
		}
	default:
		return in, inference.InvalidInput(`input.messages or input.prompt is required: {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}`)
	}

	if v, ok := fields["max_tokens"]; ok && !isNull(v) {
		if k := kind(v); k != "number" {
			return in, inference.InvalidInput("input.max_tokens must be an integer, got %s", a(k))
		}
		tok := string(bytes.TrimSpace(v))
		f, err := strconv.ParseFloat(tok, 64)
		if err != nil || f != math.Trunc(f) {
			return in, inference.InvalidInput("input.max_tokens must be an integer, got %s", clip(tok))
		}
		if f < 1 || f > float64(maxTokens) {
			return in, inference.InvalidInput("input.max_tokens must be 1 to %d, got %s", maxTokens, clip(tok))
		}
		in.maxTokens = int(f)
	}
	if v, ok := fields["temperature"]; ok && !isNull(v) {
		if k := kind(v); k != "number" {
			return in, inference.InvalidInput("input.temperature must be a number, got %s", a(k))
		}
		tok := string(bytes.TrimSpace(v))
		t, err := strconv.ParseFloat(tok, 64)
		if err != nil || math.IsNaN(t) || t < 0 || t > MaxTemperature {
			return in, inference.InvalidInput("input.temperature must be 0 to %g, got %s", MaxTemperature, clip(tok))
		}
		in.temperature = &t
	}
	return in, nil
}

func decodeMessages(raw json.RawMessage) ([]message, error) {
	if k := kind(raw); k != "array" {
		return nil, inference.InvalidInput("input.messages must be an array of {role, content} objects, got %s", a(k))
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, inference.InvalidInput("input.messages is not a valid JSON array: %v", err)
	}
	if len(elems) == 0 {
		return nil, inference.InvalidInput("input.messages is empty: give at least one message")
	}
	if len(elems) > MaxMessages {
		return nil, inference.InvalidInput("input.messages has %d messages, more than %d", len(elems), MaxMessages)
	}
	msgs := make([]message, len(elems))
	for i, e := range elems {
		name := "input.messages[" + strconv.Itoa(i) + "]"
		if k := kind(e); k != "object" {
			return nil, inference.InvalidInput("%s must be a {role, content} object, got %s", name, a(k))
		}
		var f map[string]json.RawMessage
		if err := json.Unmarshal(e, &f); err != nil {
			return nil, inference.InvalidInput("%s is not a valid JSON object: %v", name, err)
		}
		for k := range f {
			if k != "role" && k != "content" {
				return nil, inference.InvalidInput("%s: unknown field %q (the fields are role and content)", name, clip(k))
			}
		}
		role, ok := f["role"]
		if !ok {
			return nil, inference.InvalidInput("%s.role is required: system, user or assistant", name)
		}
		if k := kind(role); k != "string" {
			return nil, inference.InvalidInput("%s.role must be a string (system, user or assistant), got %s", name, a(k))
		}
		_ = json.Unmarshal(role, &msgs[i].Role)
		switch msgs[i].Role {
		case "system", "user", "assistant":
		default:
			return nil, inference.InvalidInput("%s.role must be system, user or assistant, got %q", name, clip(msgs[i].Role))
		}
		content, ok := f["content"]
		if !ok {
			return nil, inference.InvalidInput("%s.content is required: the message text", name)
		}
		if k := kind(content); k != "string" {
			return nil, inference.InvalidInput("%s.content must be a string, got %s", name, a(k))
		}
		if err := json.Unmarshal(content, &msgs[i].Content); err != nil {
			return nil, inference.InvalidInput("%s.content is not a valid JSON string: %v", name, err)
		}
	}
	return msgs, nil
}

func isNull(raw []byte) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

func isEmptyObject(raw []byte) bool {
	var m map[string]json.RawMessage
	return kind(raw) == "object" && json.Unmarshal(raw, &m) == nil && len(m) == 0
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// kind and a name a JSON value's type in messages (see inference.JSONKind).
var (
	kind = inference.JSONKind
	a    = inference.WithArticle
)
