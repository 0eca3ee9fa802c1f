package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"unicode/utf8"
)

// DecodeRequest decodes a request body. Any failure is an *Error of type
// invalid_request whose message names the bad field. The returned Request
// carries whatever id could be read even on failure, so the reply can echo it.
func DecodeRequest(body []byte) (Request, *Error) {
	var r Request
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return r, Errorf(InvalidRequest, "empty body: want a JSON object like {\"input\": {...}}")
	}
	if trimmed[0] != '{' {
		return r, Errorf(InvalidRequest, "body is not a JSON object")
	}
	if !utf8.Valid(trimmed) {
		r.ID = PeekID(trimmed)
		return r, Errorf(InvalidRequest, "body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if err := dec.Decode(&r); err != nil {
		r.ID = PeekID(trimmed)
		return r, decodeError(err)
	}
	if dec.More() {
		r.ID = PeekID(trimmed)
		return r, Errorf(InvalidRequest, "trailing data after the JSON object")
	}
	if len(r.ID) > MaxRequestIDLen {
		long := r.ID
		r.ID = ""
		return r, Errorf(InvalidRequest, "field \"id\": %d bytes, the limit is %d (starts %q)", len(long), MaxRequestIDLen, long[:16])
	}
	if r.DeadlineMS < 0 {
		return r, Errorf(InvalidRequest, "field \"deadline_ms\": must be >= 0, got %d", r.DeadlineMS)
	}
	if isNull(r.Input) {
		r.Input = nil
	}
	if isNull(r.Params) {
		r.Params = nil
	}
	if len(r.Params) > 0 && r.Params[0] != '{' {
		return r, Errorf(InvalidRequest, "field \"params\": want a JSON object")
	}
	if r.Input == nil && !r.Cancel {
		return r, Errorf(InvalidRequest, "field \"input\" is missing")
	}
	return r, nil
}

func isNull(m json.RawMessage) bool { return len(m) == 4 && string(m) == "null" }

func decodeError(err error) *Error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return Errorf(InvalidRequest, "body must be a JSON object, got %s", te.Value)
		}
		return Errorf(InvalidRequest, "field %q: want %s, got %s", field, typeName(te.Type.Kind().String()), te.Value)
	case errors.As(err, &se):
		return Errorf(InvalidRequest, "malformed JSON at byte %d: %v", se.Offset, err)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(InvalidRequest, "malformed JSON: unexpected end of body")
	}
	return Errorf(InvalidRequest, "malformed JSON: %v", err)
}

func typeName(kind string) string {
	switch kind {
	case "int64", "int", "int32":
		return "an integer"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	}
	return kind
}

// PeekID returns the top-level "id" of body when it is a JSON string of at
// most MaxRequestIDLen bytes, even when the rest of the body is broken or of
// the wrong shape; otherwise "".
func PeekID(body []byte) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return ""
		}
		if k == "id" {
			v, err := dec.Token()
			if s, ok := v.(string); err == nil && ok && len(s) <= MaxRequestIDLen {
				return s
			}
			return ""
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}
