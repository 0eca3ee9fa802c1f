package llm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mqttinfer/mqttinfer/inference"
)

// ErrStreamBroken is wrapped by the error of a request whose answer did not
// arrive whole: the request Timeout or the IdleTimeout passed, the
// connection dropped, or the backend ended the stream before it finished
// (neither "data: [DONE]" nor a finish_reason) or sent something that is
// not a chat chunk. The wrapping error says which, and how many deltas had
// arrived. Deltas already emitted stay emitted; the transport ends the
// stream with an error event.
var ErrStreamBroken = errors.New("chat: stream broken")

// ErrBackendUnreachable is wrapped by the error of a request that got no
// HTTP response at all: connection refused, DNS or TLS failure.
var ErrBackendUnreachable = errors.New("chat: backend unreachable")

// BackendError is an error the backend answered: an HTTP status other than
// 2xx, or an error object inside a 200 stream. Its text never contains the
// API key.
//
// Intended mapping to replies (the transport's job):
//
//   - 400, 413, 422 (the backend says the request is bad, e.g. the context
//     length is exceeded): 422 invalid_input with Message. Unwrap returns an
//     *inference.InputError for these, so inference.IsInvalidInput is true
//     and a transport that already maps it needs nothing more.
//   - 401, 403 (bad or missing key): 503 model_unavailable. Message then
//     never repeats the backend's text, which may show part of the key.
//   - 429: 503 model_unavailable with retry_after_ms from RetryAfter (0
//     when the backend sent no Retry-After: use the service default).
//   - 404 (usually an unknown model name) and any other status, 5xx
//     included: 503 model_unavailable with Message.
type BackendError struct {
	// Status is the HTTP status, or for an error inside a stream the code
	// the backend put in its error object (500 when it gave none).
	Status int
	// RetryAfter is the wait the backend asked for in its Retry-After
	// header (delay-seconds or an HTTP-date); 0 when it did not say.
	RetryAfter time.Duration
	// Message is the backend's error message, cleaned up for a device:
	// control characters removed, at most 512 bytes, the key redacted.
	Message string
	// Code is the backend's error code or type when it gave one, e.g.
	// "invalid_api_key", "rate_limit_exceeded", "exceed_context_size_error".
	Code string
	// InStream is true when the error came inside a 200 event stream
	// (llama.cpp, vLLM and OpenAI report late failures that way).
	InStream bool
}

func (e *BackendError) Error() string {
	var b strings.Builder
	if e.InStream {
		fmt.Fprintf(&b, "chat: backend reported an error in the stream (code %d)", e.Status)
	} else {
		fmt.Fprintf(&b, "chat: backend answered HTTP %d", e.Status)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

// InvalidInput reports whether the backend said the request itself is bad
// (400, 413 or 422), so the device must change it rather than retry.
func (e *BackendError) InvalidInput() bool {
	return e.Status == http.StatusBadRequest || e.Status == http.StatusRequestEntityTooLarge ||
		e.Status == http.StatusUnprocessableEntity
}

// Unwrap returns an *inference.InputError carrying the backend's message
// when InvalidInput is true, and nil otherwise.
func (e *BackendError) Unwrap() error {
	if !e.InvalidInput() {
		return nil
	}
	msg := "the chat backend rejected the request"
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return &inference.InputError{Msg: msg}
}

// maxErrorBody is how much of an error response is read.
const maxErrorBody = 64 << 10

// maxMessage is the longest Message kept, in bytes.
const maxMessage = 512

// backendError builds the error for a non-2xx response with the given body.
func (m *Model) backendError(status int, header http.Header, body []byte, now time.Time) *BackendError {
	e := &BackendError{Status: status}
	msg, code, _ := parseErrorBody(body)
	e.Code = m.clean(code, 64)
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		// OpenAI's 401 text shows the start and end of the key it got.
		if m.key == "" {
			e.Message = fmt.Sprintf("the backend wants an API key and none is set: put it in the environment variable %s", m.cfg.APIKeyEnv)
		} else {
			e.Message = fmt.Sprintf("the backend refused the API key from the environment variable %s", m.cfg.APIKeyEnv)
		}
		if e.Code != "" {
			e.Message += " (" + e.Code + ")"
		}
		return e
	case http.StatusTooManyRequests:
		e.RetryAfter = parseRetryAfter(header.Get("Retry-After"), now)
	}
	e.Message = m.clean(msg, maxMessage)
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}

// streamError builds the error for an error object inside a stream.
func (m *Model) streamError(data []byte) *BackendError {
	msg, code, status := parseErrorBody(data)
	if status < 400 || status > 599 {
		status = http.StatusInternalServerError
	}
	e := &BackendError{Status: status, Code: m.clean(code, 64), Message: m.clean(msg, maxMessage), InStream: true}
	if e.Message == "" {
		e.Message = "no message"
	}
	return e
}

// parseErrorBody finds the message, code and numeric status in the error
// bodies OpenAI-compatible servers send:
//
//	{"error": {"message": "...", "type": "...", "code": "..." or 400}}  OpenAI, Ollama, llama.cpp, vLLM
//	{"error": "..."}                                                   Ollama's native API, proxies
//	{"object": "error", "message": "...", "type": "...", "code": 400}  older vLLM
//	{"detail": "..."}                                                  FastAPI (vLLM) validation
//
// and falls back to the body as text.
func parseErrorBody(body []byte) (msg, code string, status int) {
	body = bytes.TrimSpace(body)
	var obj struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Code    json.RawMessage `json:"code"`
		Detail  json.RawMessage `json:"detail"`
	}
	if len(body) == 0 || body[0] != '{' || json.Unmarshal(body, &obj) != nil {
		return string(body), "", 0
	}
	if e := bytes.TrimSpace(obj.Error); len(e) > 0 && e[0] == '"' {
		_ = json.Unmarshal(e, &msg)
		return msg, "", 0
	} else if len(e) > 0 && e[0] == '{' {
		var inner struct {
			Message string          `json:"message"`
			Type    string          `json:"type"`
			Code    json.RawMessage `json:"code"`
		}
		if json.Unmarshal(e, &inner) == nil {
			obj.Message, obj.Type, obj.Code = inner.Message, inner.Type, inner.Code
		}
	}
	msg = obj.Message
	if msg == "" && len(obj.Detail) > 0 {
		if err := json.Unmarshal(obj.Detail, &msg); err != nil {
			msg = string(obj.Detail) // a list of validation errors: keep it as JSON
		}
	}
	code = obj.Type
	if c := bytes.TrimSpace(obj.Code); len(c) > 0 {
		var s string
		var n int
		switch {
		case json.Unmarshal(c, &s) == nil && s != "":
			code = s
		case json.Unmarshal(c, &n) == nil:
			status = n
		}
	}
	if msg == "" {
		msg = string(body)
	}
	return msg, code, status
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an
// HTTP-date. It returns 0 when v is empty, malformed or in the past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, maxRetryAfterSeconds)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), maxRetryAfterSeconds*time.Second)
	}
	return 0
}

// maxRetryAfterSeconds caps a Retry-After at a day, so a silly header
// cannot overflow a Duration.
const maxRetryAfterSeconds = 24 * 60 * 60

// clean makes backend text fit for an error message: the key redacted,
// control characters turned into spaces, invalid UTF-8 replaced, at most n
// bytes (cut at a rune boundary, "..." appended).
func (m *Model) clean(s string, n int) string {
	if m.key != "" {
		s = strings.ReplaceAll(s, m.key, "[redacted]")
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
