package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// maxDeadlineMS is the largest deadline_ms whose time.Duration does not
// overflow (about 292 years); beyond it a deadline would turn negative.
const maxDeadlineMS = math.MaxInt64 / int64(time.Millisecond)

// DecodeRequest decodes a request body. Any failure is an *Error of type
// invalid_request whose message names the bad field. On failure the returned
// Request holds only the id, when one could be read (see PeekID), so the
// reply can echo it.
//
// Field names match case-insensitively, as encoding/json does, and unknown
// fields are ignored, so newer clients can add fields.
func DecodeRequest(body []byte) (Request, *Error) {
	r, e := decodeRequest(body)
	if e != nil {
		return Request{ID: r.ID}, e
	}
	return r, nil
}

func decodeRequest(body []byte) (Request, *Error) {
	var r Request
	// Only JSON's own whitespace: bytes.TrimSpace would also strip Unicode
	// spaces such as U+00A0, which no JSON parser accepts.
	trimmed := bytes.Trim(body, " \t\r\n")
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
	// Decoder.More reports false before a stray '}' or ']', so compare the
	// offset instead: trimmed ends with the object unless data follows it.
	if off := dec.InputOffset(); off != int64(len(trimmed)) {
		r.ID = PeekID(trimmed)
		return r, Errorf(InvalidRequest, "trailing data after the JSON object at byte %d", off)
	}
	if len(r.ID) > MaxRequestIDLen {
		long := r.ID
		r.ID = ""
		return r, Errorf(InvalidRequest, "field \"id\": %d bytes, the limit is %d (starts %q)", len(long), MaxRequestIDLen, long[:16])
	}
	if r.ModelVersion != "" && !validVersion(r.ModelVersion) {
		return r, Errorf(InvalidRequest, "field \"model_version\": %q is not a version: 1-64 characters of [A-Za-z0-9._-]", r.ModelVersion)
	}
	if r.DeadlineMS < 0 {
		return r, Errorf(InvalidRequest, "field \"deadline_ms\": must be >= 0, got %d", r.DeadlineMS)
	}
	if r.DeadlineMS > maxDeadlineMS {
		return r, Errorf(InvalidRequest, "field \"deadline_ms\": %d is too large, the limit is %d", r.DeadlineMS, maxDeadlineMS)
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
	if r.Input == nil && r.Inputs == nil && !r.Cancel {
		return r, Errorf(InvalidRequest, "field \"input\" is missing")
	}
	return r, nil
}

// validVersion reports whether v can name a model version: 1-64 bytes of
// [A-Za-z0-9._-], like device and model ids.
func validVersion(v string) bool {
	if v == "" || len(v) > 64 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
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

// PeekID returns the id a request body carries when it is a JSON string of
// at most MaxRequestIDLen bytes, even when the rest of the body is broken or
// of the wrong shape; otherwise "". It reads the top-level keys the way
// DecodeRequest does (case-insensitively, the last one wins) and stops at the
// first syntax error, keeping the id read so far.
func PeekID(body []byte) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	id := ""
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			break
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			break
		}
		if key, _ := k.(string); !strings.EqualFold(key, "id") || len(v) == 0 || v[0] != '"' {
			continue // like DecodeRequest, a non-string id leaves the last one
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			id = s
		}
	}
	if len(id) > MaxRequestIDLen {
		return ""
	}
	return id
}
