// Package api owns the wire payloads of mqttinfer: requests, results, errors
// and stream events, the table of status codes and error types, and decoding
// with messages that name the bad field. It imports none of the service's
// other packages.
package api

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// MaxRequestIDLen is the longest request id a client may send, in bytes.
const MaxRequestIDLen = 64

// ErrorType is the machine-readable kind of an error reply.
type ErrorType string

// The error types of the wire contract. Each has exactly one status code (Status).
const (
	InvalidRequest     ErrorType = "invalid_request"
	Forbidden          ErrorType = "forbidden"
	ModelNotFound      ErrorType = "model_not_found"
	VersionNotFound    ErrorType = "model_version_not_found"
	UnsupportedVersion ErrorType = "unsupported_version"
	DeadlineExceeded   ErrorType = "deadline_exceeded"
	PayloadTooLarge    ErrorType = "payload_too_large"
	InvalidInput       ErrorType = "invalid_input"
	RateLimited        ErrorType = "rate_limited"
	Canceled           ErrorType = "canceled"
	InferenceFailed    ErrorType = "inference_failed"
	Overloaded         ErrorType = "overloaded"
	ModelUnavailable   ErrorType = "model_unavailable"
)

// StatusOK is the status of a successful result.
const StatusOK = 200

var statusOf = map[ErrorType]int{
	InvalidRequest:     400,
	Forbidden:          403,
	ModelNotFound:      404,
	VersionNotFound:    404,
	UnsupportedVersion: 404,
	DeadlineExceeded:   408,
	PayloadTooLarge:    413,
	InvalidInput:       422,
	RateLimited:        429,
	Canceled:           499,
	InferenceFailed:    500,
	Overloaded:         503,
	ModelUnavailable:   503,
}

// Status is the HTTP-style status code carried in-band for the error type;
// 500 for a type outside the table.
func (t ErrorType) Status() int {
	if s, ok := statusOf[t]; ok {
		return s
	}
	return 500
}

// ErrorTypes lists every error type of the contract, sorted by status then name.
func ErrorTypes() []ErrorType {
	ts := make([]ErrorType, 0, len(statusOf))
	for t := range statusOf {
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b ErrorType) int {
		if d := a.Status() - b.Status(); d != 0 {
			return d
		}
		return strings.Compare(string(a), string(b))
	})
	return ts
}

// Error is the error object of an error reply. It implements error so that
// code paths can return it and the transport can send it as it is.
type Error struct {
	Type         ErrorType `json:"type"`
	Message      string    `json:"message"`
	RetryAfterMS int64     `json:"retry_after_ms,omitempty"`
	// Models lists the models that exist, on model_not_found.
	Models []string `json:"models,omitempty"`
	// Versions lists the supported API versions, on unsupported_version,
	// or the model's versions, on model_version_not_found.
	Versions []string `json:"versions,omitempty"`
}

// Errorf builds an Error of type t with a formatted message.
func Errorf(t ErrorType, format string, args ...any) *Error {
	return &Error{Type: t, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return string(e.Type) + ": " + e.Message }

// Status is the status code of the error's type.
func (e *Error) Status() int { return e.Type.Status() }

// Request is an inference request (v1 and v2 share the envelope).
type Request struct {
	// ID is echoed in the reply; generated when absent; at most 64 bytes.
	ID string `json:"id,omitempty"`
	// Input is the model-specific input, kept raw for the model to decode.
	Input json.RawMessage `json:"input,omitempty"`
	// Inputs is a batch of inputs (v2 only): the reply carries one entry of
	// Outputs per input, in order.
	Inputs []json.RawMessage `json:"inputs,omitempty"`
	// Params are model-specific options.
	Params json.RawMessage `json:"params,omitempty"`
	// Stream asks for stream events when the model streams.
	Stream bool `json:"stream,omitempty"`
	// DeadlineMS bounds how long the request may wait before it is worked
	// on, in milliseconds from receipt; 0 means the service default.
	DeadlineMS int64 `json:"deadline_ms,omitempty"`
	// Cancel cancels the running stream with the same ID.
	Cancel bool `json:"cancel,omitempty"`
	// ModelVersion pins the version of the model that must answer; empty
	// lets the model's version policy choose (latest, fixed, canary).
	ModelVersion string `json:"model_version,omitempty"`
}

// RateLimit tells a device where it stands with its token bucket.
type RateLimit struct {
	// Limit is the bucket size (burst), in tokens.
	Limit int `json:"limit"`
	// Remaining is the whole tokens left after this request.
	Remaining int `json:"remaining"`
	// ResetMS is the time until the bucket is full again, in milliseconds.
	ResetMS int64 `json:"reset_ms"`
}

// Result is a reply: a result (Status 200, Output set) or an error (Error set).
type Result struct {
	ID           string          `json:"id"`
	Model        string          `json:"model"`
	ModelVersion string          `json:"model_version,omitempty"`
	Status       int             `json:"status"`
	Output       json.RawMessage `json:"output,omitempty"`
	// Outputs answers a v2 batch (Request.Inputs), one Item per input.
	Outputs     []Item     `json:"outputs,omitempty"`
	Error       *Error     `json:"error,omitempty"`
	LatencyMS   float64    `json:"latency_ms,omitempty"`
	RateLimit   *RateLimit `json:"ratelimit,omitempty"`
	Deprecation string     `json:"deprecation,omitempty"`
}

// Item is one input's answer in a v2 batch: an output (Status 200) or an error.
type Item struct {
	Status int             `json:"status"`
	Output json.RawMessage `json:"output,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// ErrorResult builds the error reply for request id on model.
func ErrorResult(id, model string, e *Error) Result {
	return Result{ID: id, Model: model, Status: e.Status(), Error: e}
}

// Stream event kinds.
const (
	EventDelta = "delta"
	EventDone  = "done"
	EventError = "error"
)

// StreamEvent is one event of a streamed result: deltas in seq order, then
// exactly one done or error event.
type StreamEvent struct {
	ID        string          `json:"id"`
	Model     string          `json:"model"`
	Seq       int             `json:"seq"`
	Event     string          `json:"event"`
	Delta     json.RawMessage `json:"delta,omitempty"`
	Status    int             `json:"status,omitempty"`
	Output    json.RawMessage `json:"output,omitempty"`
	Usage     json.RawMessage `json:"usage,omitempty"`
	Error     *Error          `json:"error,omitempty"`
	RateLimit *RateLimit      `json:"ratelimit,omitempty"`
}
