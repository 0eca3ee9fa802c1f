// Package llm is the chat model: a client of any server that speaks the
// OpenAI Chat Completions API (Ollama, llama.cpp's llama-server, vLLM,
// OpenAI), written on the standard library alone. It always asks the
// server to stream and passes the text on as deltas while it arrives; it
// holds no weights and needs no runtime.
//
// # Input
//
//	{"messages": [{"role": "system", "content": "Answer in one line."},
//	              {"role": "user", "content": "Why is the sky blue?"}],
//	 "max_tokens": 64, "temperature": 0.2}
//
// or the shorthand for one user message:
//
//	{"prompt": "Why is the sky blue?"}
//
// messages holds 1 to MaxMessages objects with exactly a role (system,
// user or assistant) and a string content. max_tokens is an integer from 1
// to Config.MaxTokens, which is also its default; temperature a number
// from 0 to 2 (the server's default when absent). Unknown fields and
// request params are rejected. Every rejection is an inference.InvalidInput
// error whose message names the field.
//
// # Output
//
// Streaming (InferStream), each piece of text is emitted as a Delta
// ({"text": "..."}) in order; empty pieces are not emitted. Then, and for
// Infer, the result is an Output: the whole text, the finish_reason, the
// Usage and the model that answered. The request asks for
// "stream_options": {"include_usage": true}, so the servers report usage
// at the end of the stream; when one does not (an older server), Output
// says UsageEstimated and counts the chunks that carried text instead.
//
// # Throttling
//
// A request's tokens are not known until it ends, so the throttle charges
// Info().Cost up front — by default Config.MaxTokens, one throttle token
// per token the request may generate — and settles to actual use when the
// request ends: Charge(charged, output.Usage) is what was used (by default
// the completion tokens), and charged minus that goes back to the device's
// bucket. A request's max_tokens never exceeds the cap, so the up-front
// charge is never too low. When the bucket's burst is smaller than
// MaxTokens, set Config.Cost (or the service's per-model cost) to what one
// request should take at most; Charge scales to it.
//
// # Errors
//
// What the transport should answer (see BackendError for the details):
//
//	inference.InvalidInput                     422 invalid_input
//	*BackendError 400, 413, 422                422 invalid_input with the backend's message (Unwrap gives an *inference.InputError)
//	*BackendError 401, 403                     503 model_unavailable; the message never holds the key
//	*BackendError 429                          503 model_unavailable, retry_after_ms from BackendError.RetryAfter
//	*BackendError 404, 5xx, other              503 model_unavailable with the backend's message
//	ErrBackendUnreachable (wrapped)            503 model_unavailable
//	ErrStreamBroken (wrapped)                  an error event (503 model_unavailable suggested): Timeout, IdleTimeout,
//	                                           connection dropped, or the stream ended with neither [DONE] nor a finish_reason
//	context.Canceled / DeadlineExceeded        the caller's own ctx ended the request; the backend request is stopped at once
//	emit's error (wrapped)                     the delivery failed; the backend request is stopped at once
//
// Deltas emitted before an error stay emitted. The API key is read once by
// New and appears only in the Authorization header: never in Info, errors
// or logs; backend messages have it redacted, and 401/403 messages do not
// repeat the backend's text at all (OpenAI's shows part of the key).
//
// # Servers
//
// All four send "data: <chunk JSON>" events separated by blank lines and
// end with "data: [DONE]". Their differences, which this client accepts:
// Ollama adds "system_fingerprint": "fp_ollama" and sends usage only when
// asked; llama.cpp sends "content": null in the first delta, sorts its
// keys, adds "timings" and reports a failure inside the stream either as
// "data: {"error": {...}}" or, in older builds, as a non-standard
// "error: {...}" line; vLLM sends "usage" only in its final chunk with
// empty choices and reports failures as "data: {"error": ...}"; OpenAI
// sends "usage": null in every chunk but the last. A server that answers
// with a whole application/json completion instead of a stream is read as
// one delta. Server-sent events are parsed by SSEReader, which follows the
// WHATWG standard (comments as keep-alives, CRLF, CR or LF line ends,
// multi-line data).
package llm
