package inference

import "bytes"

// JSONKind names the JSON type of raw (valid JSON, or empty): "string",
// "object", "array", "boolean", "null", "number", or "nothing" when empty.
// Models use it to say what they got in InvalidInput messages.
func JSONKind(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// WithArticle puts the indefinite article before a JSONKind, for messages:
// "an object", "a string"; "null" and "nothing" stay as they are.
func WithArticle(kind string) string {
	switch kind {
	case "null", "nothing":
		return kind
	case "object", "array":
		return "an " + kind
	}
	return "a " + kind
}
