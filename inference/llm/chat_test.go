package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/inference"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testKey = "sk-test1234567890abcdef"

// seen is what the backend saw of one request.
type seen struct {
	method, path, auth, accept, ctype string
	body                              map[string]any
}

// backend is a local OpenAI-compatible server run by a test.
type backend struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

// newBackend starts a server on 127.0.0.1 that records each request (the
// body read whole, so the server notices a client that goes away) and
// hands it to h.
func newBackend(t testing.TB, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(r.Body)
		s := seen{method: r.Method, path: r.URL.Path, auth: r.Header.Get("Authorization"),
			accept: r.Header.Get("Accept"), ctype: r.Header.Get("Content-Type")}
		if err == nil {
			_ = json.Unmarshal(raw, &s.body)
		}
		b.mu.Lock()
		b.reqs = append(b.reqs, s)
		b.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) last(t testing.TB) seen {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.reqs) == 0 {
		t.Fatal("the backend got no request")
	}
	return b.reqs[len(b.reqs)-1]
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writePieces writes b in pieces of n bytes, flushing each, so the client
// sees lines and CRLF pairs split across reads.
func writePieces(w http.ResponseWriter, b []byte, n int) {
	rc := http.NewResponseController(w)
	for len(b) > 0 {
		k := min(n, len(b))
		if _, err := w.Write(b[:k]); err != nil {
			return
		}
		_ = rc.Flush()
		b = b[k:]
	}
}

// replay answers every request with status, content type and body.
func replay(status int, ctype string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ctype)
		w.WriteHeader(status)
		writePieces(w, body, 61)
	}
}

func newModel(t testing.TB, baseURL string, change func(*Config)) *Model {
	t.Helper()
	cfg := Config{BaseURL: baseURL + "/v1", Model: "test-model", APIKeyEnv: "MQTTINFER_TEST_NO_KEY"}
	if change != nil {
		change(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func request(input string) inference.Request {
	return inference.Request{Device: "d1", Input: json.RawMessage(input)}
}

// collect runs InferStream and returns the deltas' texts, the output and the error.
func collect(ctx context.Context, m *Model, input string) ([]string, Output, error) {
	var deltas []string
	out, err := m.InferStream(ctx, request(input), func(d any) error {
		deltas = append(deltas, d.(Delta).Text)
		return nil
	})
	o, _ := out.(Output)
	return deltas, o, err
}

const prompt = `{"prompt": "Why is the sky blue?"}`

func TestServers(t *testing.T) {
	tests := []struct {
		fixture, ctype string
		tokens         []string
		finish         string
		usage          Usage
		estimated      bool
		model          string
	}{
		{"openai.sse", "text/event-stream; charset=utf-8",
			[]string{"Ray", "leigh", " scattering", ":", " air", " scatters", " blue", " light", " more", "."},
			"stop", Usage{24, 10, 34}, false, "gpt-4o-mini-2024-07-18"},
		{"openai_crlf.sse", "text/event-stream; charset=utf-8",
			[]string{"Ray", "leigh", " scattering", ":", " air", " scatters", " blue", " light", " more", "."},
			"stop", Usage{24, 10, 34}, false, "gpt-4o-mini-2024-07-18"},
		{"ollama.sse", "text/event-stream",
			[]string{"The", " sky", " looks", " blue", " because", " air", " scatters", " short", " wavelengths", "."},
			"stop", Usage{30, 10, 40}, false, "qwen2.5:0.5b"},
		// "Why is the sky blue?" is 20 bytes: 5 estimated prompt tokens.
		{"ollama_nousage.sse", "text/event-stream",
			[]string{"The", " sky", " looks", " blue"},
			"stop", Usage{5, 4, 9}, true, "qwen2.5:0.5b"},
		{"llamacpp.sse", "text/event-stream",
			[]string{"Sun", "light", " hits", " air", " mole", "cules", ";", " blue", " scatters", " most", "."},
			"stop", Usage{27, 11, 38}, false, "qwen2.5-0.5b-instruct-q4_k_m.gguf"},
		{"vllm.sse", "text/event-stream; charset=utf-8",
			[]string{"Blue", " light", " has", " a", " shorter", " wavelength", ",", " so", " it", " scatters", " more", "."},
			"length", Usage{31, 12, 43}, false, "Qwen/Qwen2.5-0.5B-Instruct"},
		{"keepalive.sse", "text/event-stream",
			[]string{"Short", " answer", ":", " scattering", "."},
			"stop", Usage{12, 5, 17}, false, "meta-llama/llama-3.2-1b-instruct"},
		{"multiline.sse", "text/event-stream",
			[]string{"Multi", "-line", " events", " work", "."},
			"stop", Usage{9, 5, 14}, false, "test-model"},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			b := newBackend(t, replay(200, tt.ctype, fixture(t, tt.fixture)))
			m := newModel(t, b.URL, nil)
			want := Output{Text: strings.Join(tt.tokens, ""), FinishReason: tt.finish, Usage: tt.usage,
				UsageEstimated: tt.estimated, Model: tt.model}

			deltas, out, err := collect(context.Background(), m, prompt)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(deltas, "|") != strings.Join(tt.tokens, "|") {
				t.Errorf("deltas %q, want %q", deltas, tt.tokens)
			}
			// The settled share is the completion tokens over max_tokens.
			want.share = float64(m.Charge(m.Info().Cost, want.Usage)) / float64(m.Info().Cost)
			if out != want {
				t.Errorf("output %+v, want %+v", out, want)
			}

			// Infer reads the same stream to the same output.
			got, err := m.Infer(context.Background(), request(prompt))
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("Infer: %+v, want %+v", got, want)
			}
		})
	}
}

func TestRequest(t *testing.T) {
	b := newBackend(t, replay(200, "text/event-stream", fixture(t, "openai.sse")))

	t.Run("defaults, no key", func(t *testing.T) {
		m := newModel(t, b.URL, nil)
		if _, _, err := collect(context.Background(), m, prompt); err != nil {
			t.Fatal(err)
		}
		s := b.last(t)
		if s.method != "POST" || s.path != "/v1/chat/completions" || s.ctype != "application/json" || s.accept != "text/event-stream" {
			t.Errorf("request %s %s, Content-Type %q, Accept %q", s.method, s.path, s.ctype, s.accept)
		}
		if s.auth != "" {
			t.Errorf("Authorization %q sent without a key", s.auth)
		}
		want := map[string]any{
			"model":          "test-model",
			"messages":       []any{map[string]any{"role": "user", "content": "Why is the sky blue?"}},
			"stream":         true,
			"stream_options": map[string]any{"include_usage": true},
			"max_tokens":     float64(DefaultMaxTokens),
		}
		if fmt.Sprint(s.body) != fmt.Sprint(want) {
			t.Errorf("body %v\nwant %v", s.body, want)
		}
	})

	t.Run("messages, max_tokens, temperature, key", func(t *testing.T) {
		t.Setenv("MQTTINFER_TEST_KEY", " "+testKey+"\n") // as $(cat keyfile) may leave it
		m := newModel(t, b.URL, func(c *Config) {
			c.BaseURL += "/" // a trailing slash is dropped
			c.APIKeyEnv = "MQTTINFER_TEST_KEY"
			c.MaxTokens = 100
		})
		in := `{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},
			{"role":"assistant","content":"Hello."},{"role":"user","content":"Sky?"}],"max_tokens":7,"temperature":0.25}`
		if _, _, err := collect(context.Background(), m, in); err != nil {
			t.Fatal(err)
		}
		s := b.last(t)
		if s.path != "/v1/chat/completions" {
			t.Errorf("path %q", s.path)
		}
		if s.auth != "Bearer "+testKey {
			t.Errorf("Authorization %q", s.auth)
		}
		if s.body["max_tokens"] != 7.0 || s.body["temperature"] != 0.25 {
			t.Errorf("max_tokens %v, temperature %v", s.body["max_tokens"], s.body["temperature"])
		}
		if msgs, _ := s.body["messages"].([]any); len(msgs) != 4 || fmt.Sprint(msgs[2]) != "map[content:Hello. role:assistant]" {
			t.Errorf("messages %v", s.body["messages"])
		}
	})
}

func TestBackendErrors(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		header    map[string]string
		body      []byte
		invalid   bool // maps to 422 invalid_input
		retry     time.Duration
		code      string
		inMessage string
	}{
		{name: "401 bad key", status: 401, body: fixture(t, "openai_401.json"), code: "invalid_api_key",
			inMessage: "refused the API key from the environment variable MQTTINFER_TEST_KEY"},
		{name: "403", status: 403, body: []byte(`{"error":{"message":"Project proj_x does not have access to model gpt-4o","type":"invalid_request_error","param":null,"code":"model_not_found"}}`),
			code: "model_not_found", inMessage: "refused the API key"},
		{name: "429 Retry-After seconds", status: 429, header: map[string]string{"Retry-After": "2"}, body: fixture(t, "openai_429.json"),
			retry: 2 * time.Second, code: "rate_limit_exceeded", inMessage: "Rate limit reached for gpt-4o-mini"},
		{name: "429 without Retry-After", status: 429, body: fixture(t, "openai_429.json"), code: "rate_limit_exceeded", inMessage: "Rate limit reached"},
		{name: "500 ollama", status: 500, body: fixture(t, "ollama_500.json"), code: "api_error",
			inMessage: "llama runner process has terminated: signal: killed"},
		{name: "502 plain text", status: 502, header: map[string]string{"Content-Type": "text/html"},
			body: []byte("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>\r\n"), inMessage: "<title>502 Bad Gateway</title>"},
		{name: "503 empty", status: 503, inMessage: "Service Unavailable"},
		{name: "404 unknown model", status: 404, body: fixture(t, "ollama_404.json"), code: "not_found_error",
			inMessage: `model "llama9" not found, try pulling it first`},
		{name: "400 openai", status: 400, body: fixture(t, "openai_400.json"), invalid: true, code: "context_length_exceeded",
			inMessage: "maximum context length is 128000 tokens"},
		{name: "400 vllm", status: 400, body: fixture(t, "vllm_400.json"), invalid: true, code: "BadRequestError",
			inMessage: "maximum context length is 32768 tokens"},
		{name: "422 fastapi", status: 422, body: []byte(`{"detail":[{"type":"missing","loc":["body","messages"],"msg":"Field required"}]}`),
			invalid: true, inMessage: "Field required"},
	}
	t.Setenv("MQTTINFER_TEST_KEY", testKey)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write(tt.body)
			})
			m := newModel(t, b.URL, func(c *Config) { c.APIKeyEnv = "MQTTINFER_TEST_KEY" })
			deltas, _, err := collect(context.Background(), m, prompt)
			var be *BackendError
			if !errors.As(err, &be) {
				t.Fatalf("error %v (%T), want a *BackendError", err, err)
			}
			if len(deltas) != 0 {
				t.Errorf("deltas %q", deltas)
			}
			if be.Status != tt.status || be.RetryAfter != tt.retry || be.Code != tt.code || be.InStream {
				t.Errorf("got status %d, retry %s, code %q, in stream %v; want %d, %s, %q",
					be.Status, be.RetryAfter, be.Code, be.InStream, tt.status, tt.retry, tt.code)
			}
			if !strings.Contains(be.Message, tt.inMessage) || !strings.Contains(err.Error(), tt.inMessage) {
				t.Errorf("message %q, error %q: want them to hold %q", be.Message, err, tt.inMessage)
			}
			if inference.IsInvalidInput(err) != tt.invalid || be.InvalidInput() != tt.invalid {
				t.Errorf("IsInvalidInput %v, want %v", inference.IsInvalidInput(err), tt.invalid)
			}
			if strings.Contains(err.Error(), "sk-test1") || strings.Contains(err.Error(), "cdef") {
				t.Errorf("error shows (part of) the key: %q", err)
			}
			if strings.ContainsAny(be.Message, "\r\n") {
				t.Errorf("message has line breaks: %q", be.Message)
			}
		})
	}
}

func TestBackendError401WithoutKey(t *testing.T) {
	b := newBackend(t, replay(401, "application/json", fixture(t, "openai_401.json")))
	m := newModel(t, b.URL, nil)
	_, _, err := collect(context.Background(), m, prompt)
	var be *BackendError
	if !errors.As(err, &be) || be.Status != 401 || !strings.Contains(be.Message, "none is set: put it in the environment variable MQTTINFER_TEST_NO_KEY") {
		t.Fatalf("error %v", err)
	}
}

// TestKeyNeverShown has a hostile backend echo the key everywhere it can.
func TestKeyNeverShown(t *testing.T) {
	t.Setenv("MQTTINFER_TEST_KEY", testKey)
	for _, tt := range []struct {
		name   string
		status int
		ctype  string
		body   string // %s is the bearer token the backend got
	}{
		{"401", 401, "application/json", `{"error":{"message":"Incorrect API key provided: %s.","type":"invalid_request_error","code":"invalid_api_key"}}`},
		{"500", 500, "application/json", `{"error":{"message":"upstream said no to %s","type":"api_error"}}`},
		{"429", 429, "text/plain", `slow down, %s`},
		{"stream error", 200, "text/event-stream", "data: {\"error\":{\"code\":500,\"message\":\"bad key %s\"}}\n\n"},
		{"llama.cpp error field", 200, "text/event-stream", "error: {\"code\":500,\"message\":\"bad key %s\"}\n\ndata: [DONE]\n\n"},
		{"not a chunk", 200, "text/event-stream", "data: key=%s\n\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				w.WriteHeader(tt.status)
				fmt.Fprintf(w, tt.body, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
			})
			m := newModel(t, b.URL, func(c *Config) { c.APIKeyEnv = "MQTTINFER_TEST_KEY" })
			_, _, err := collect(context.Background(), m, prompt)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), testKey) {
				t.Errorf("error shows the key: %q", err)
			}
			if b.last(t).auth != "Bearer "+testKey {
				t.Errorf("the backend did not get the key")
			}
			if tt.status != 401 && !strings.Contains(err.Error(), "[redacted]") {
				t.Errorf("error %q: want the key redacted", err)
			}
			info, _ := json.Marshal(m.Info())
			if strings.Contains(string(info), testKey) {
				t.Errorf("Info shows the key")
			}
		})
	}
}

func TestStreamErrors(t *testing.T) {
	t.Run("llama.cpp error field", func(t *testing.T) {
		b := newBackend(t, replay(200, "text/event-stream", fixture(t, "llamacpp_error_field.sse")))
		m := newModel(t, b.URL, nil)
		deltas, _, err := collect(context.Background(), m, prompt)
		var be *BackendError
		if !errors.As(err, &be) || be.Status != 500 || !be.InStream || be.Code != "server_error" ||
			!strings.Contains(be.Message, "Input prompt is too big compared to KV size") {
			t.Fatalf("error %#v", err)
		}
		if inference.IsInvalidInput(err) {
			t.Error("a 500 in the stream is invalid input")
		}
		if strings.Join(deltas, "") != "Sunlight" {
			t.Errorf("deltas %q, want the two before the error", deltas)
		}
	})
	t.Run("llama.cpp error data", func(t *testing.T) {
		b := newBackend(t, replay(200, "text/event-stream", fixture(t, "llamacpp_error_data.sse")))
		m := newModel(t, b.URL, nil)
		_, _, err := collect(context.Background(), m, prompt)
		var be *BackendError
		if !errors.As(err, &be) || be.Status != 400 || !be.InStream || be.Code != "exceed_context_size_error" {
			t.Fatalf("error %v", err)
		}
		if !inference.IsInvalidInput(err) {
			t.Error("an exceeded context is not invalid input")
		}
		if !strings.Contains(err.Error(), "backend reported an error in the stream (code 400): the request exceeds the available context size") {
			t.Errorf("error %q", err)
		}
	})
	t.Run("vllm error object", func(t *testing.T) {
		body := "data: " + strings.TrimSpace(string(fixture(t, "vllm_400.json"))) + "\n\ndata: [DONE]\n\n"
		b := newBackend(t, replay(200, "text/event-stream", []byte(body)))
		m := newModel(t, b.URL, nil)
		_, _, err := collect(context.Background(), m, prompt)
		var be *BackendError
		if !errors.As(err, &be) || be.Status != 400 || !inference.IsInvalidInput(err) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("not a chunk", func(t *testing.T) {
		b := newBackend(t, replay(200, "text/event-stream", []byte("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: <html>\n\n")))
		m := newModel(t, b.URL, nil)
		deltas, _, err := collect(context.Background(), m, prompt)
		if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "not a chat chunk") || !strings.Contains(err.Error(), "<html>") {
			t.Fatalf("error %v", err)
		}
		if len(deltas) != 1 {
			t.Errorf("deltas %q", deltas)
		}
	})
	t.Run("endless text", func(t *testing.T) {
		// A server that ignores max_tokens is cut off once it has sent
		// far more than max_tokens could hold.
		b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			ev := []byte(`data: {"choices":[{"delta":{"content":"` + strings.Repeat("x", 1000) + `"}}]}` + "\n\n")
			for r.Context().Err() == nil {
				if _, err := w.Write(ev); err != nil {
					return
				}
			}
		})
		m := newModel(t, b.URL, nil)
		_, _, err := collect(context.Background(), m, `{"prompt":"go","max_tokens":1}`)
		if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "more than") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestDrop(t *testing.T) {
	body := fixture(t, "openai_drop.sse")
	want := []string{"Ray", "leigh", " scattering", ":", " air"}

	t.Run("clean end", func(t *testing.T) {
		// The handler returns: net/http ends the chunked body properly,
		// but the answer has neither a finish_reason nor [DONE].
		b := newBackend(t, replay(200, "text/event-stream", body))
		m := newModel(t, b.URL, nil)
		deltas, _, err := collect(context.Background(), m, prompt)
		if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "closed the stream after 5 deltas without a finish_reason") {
			t.Fatalf("error %v", err)
		}
		if strings.Join(deltas, "|") != strings.Join(want, "|") {
			t.Errorf("deltas %q", deltas)
		}
	})
	t.Run("connection closed", func(t *testing.T) {
		b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			writePieces(w, body, 61)
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			_ = conn.Close() // in the middle of the chunked body
		})
		m := newModel(t, b.URL, nil)
		deltas, _, err := collect(context.Background(), m, prompt)
		if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "dropped after 5 deltas") {
			t.Fatalf("error %v", err)
		}
		if strings.Join(deltas, "|") != strings.Join(want, "|") {
			t.Errorf("deltas %q", deltas)
		}
	})
	t.Run("finish without DONE", func(t *testing.T) {
		// ik_llama.cpp without --send-done: finish_reason, then the end.
		b := newBackend(t, replay(200, "text/event-stream",
			[]byte("data: {\"choices\":[{\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\n")))
		m := newModel(t, b.URL, nil)
		_, out, err := collect(context.Background(), m, prompt)
		if err != nil || out.Text != "ok" || out.FinishReason != "stop" || !out.UsageEstimated || out.Usage.CompletionTokens != 1 {
			t.Fatalf("output %+v, error %v", out, err)
		}
	})
}

// stalled starts a backend that sends head (headers and some events) and
// then waits until the client goes away, which it reports on the channel.
func stalled(t *testing.T, head []byte) (*backend, <-chan struct{}) {
	gone := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		defer close(gone)
		if head != nil {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			writePieces(w, head, 1<<20)
		}
		<-r.Context().Done()
	})
	return b, gone
}

// waitGone fails the test unless the backend saw the client go away. The
// deadline only keeps a broken build from hanging.
func waitGone(t *testing.T, gone <-chan struct{}) {
	t.Helper()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's request was not canceled")
	}
}

func TestIdleTimeout(t *testing.T) {
	head := fixture(t, "openai.sse")[:1000] // the role chunk, two deltas and a part of the third
	b, gone := stalled(t, head)
	m := newModel(t, b.URL, func(c *Config) { c.IdleTimeout = 30 * time.Millisecond })
	deltas, _, err := collect(context.Background(), m, prompt)
	if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "the idle timeout (2 deltas arrived)") {
		t.Fatalf("error %v", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Errorf("error %v looks like the caller's own context ended", err)
	}
	if strings.Join(deltas, "") != "Rayleigh" {
		t.Errorf("deltas %q", deltas)
	}
	waitGone(t, gone)
}

func TestTimeout(t *testing.T) {
	b, gone := stalled(t, nil) // not even headers
	m := newModel(t, b.URL, func(c *Config) { c.Timeout = 30 * time.Millisecond })
	_, _, err := collect(context.Background(), m, prompt)
	if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "within the timeout of 30ms") {
		t.Fatalf("error %v", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrBackendUnreachable) {
		t.Errorf("error %v", err)
	}
	waitGone(t, gone)
}

func TestCallerDeadline(t *testing.T) {
	b, gone := stalled(t, nil)
	m := newModel(t, b.URL, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, _, err := collect(ctx, m, prompt)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrStreamBroken) {
		t.Fatalf("error %v", err)
	}
	waitGone(t, gone)
}

func TestCancel(t *testing.T) {
	b, gone := stalled(t, fixture(t, "ollama.sse")[:400]) // one delta and a part of the next
	m := newModel(t, b.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var deltas []string
	_, err := m.InferStream(ctx, request(prompt), func(d any) error {
		deltas = append(deltas, d.(Delta).Text)
		cancel() // the device went away after the first delta
		return nil
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrStreamBroken) {
		t.Fatalf("error %v", err)
	}
	if len(deltas) != 1 || deltas[0] != "The" {
		t.Errorf("deltas %q", deltas)
	}
	waitGone(t, gone)
}

func TestEmitError(t *testing.T) {
	b, gone := stalled(t, fixture(t, "ollama.sse")[:400])
	m := newModel(t, b.URL, nil)
	errDevice := errors.New("device unsubscribed")
	_, err := m.InferStream(context.Background(), request(prompt), func(any) error { return errDevice })
	if !errors.Is(err, errDevice) {
		t.Fatalf("error %v", err)
	}
	waitGone(t, gone)
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	m := newModel(t, "http://"+addr, nil)
	_, _, err = collect(context.Background(), m, prompt)
	if !errors.Is(err, ErrBackendUnreachable) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("error %v", err)
	}
}

func TestWholeJSONAnswer(t *testing.T) {
	// A server that ignores "stream": true answers a whole chat.completion.
	body := `{"id":"chatcmpl-1","object":"chat.completion","created":1732590500,"model":"tiny",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"Blue light scatters."},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":8,"completion_tokens":4,"total_tokens":12}}`
	b := newBackend(t, replay(200, "application/json; charset=utf-8", []byte(body)))
	m := newModel(t, b.URL, nil)
	deltas, out, err := collect(context.Background(), m, prompt)
	if err != nil {
		t.Fatal(err)
	}
	want := Output{Text: "Blue light scatters.", FinishReason: "stop", Usage: Usage{8, 4, 12}, Model: "tiny"}
	want.share = float64(m.Charge(m.Info().Cost, want.Usage)) / float64(m.Info().Cost)
	if out != want || len(deltas) != 1 || deltas[0] != want.Text {
		t.Errorf("output %+v, deltas %q", out, deltas)
	}
}

func TestNotAStream(t *testing.T) {
	// A base URL without /v1 may reach a web UI that answers 200 with HTML.
	b := newBackend(t, replay(200, "text/html; charset=utf-8", []byte("<!doctype html>\n<html><body>Open WebUI</body></html>\n")))
	m := newModel(t, b.URL, nil)
	_, _, err := collect(context.Background(), m, prompt)
	if !errors.Is(err, ErrStreamBroken) || !strings.Contains(err.Error(), "usually ends in /v1") {
		t.Fatalf("error %v", err)
	}
}

func TestEmptyEventsAndNilEmit(t *testing.T) {
	body := "data:\n\n" + string(fixture(t, "ollama_nousage.sse"))
	b := newBackend(t, replay(200, "text/event-stream", []byte(body)))
	m := newModel(t, b.URL, nil)
	out, err := m.InferStream(context.Background(), request(prompt), nil)
	if err != nil || out.(Output).Text != "The sky looks blue" {
		t.Fatalf("output %+v, error %v", out, err)
	}
}

func TestConnectionReuse(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{}
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		mu.Unlock()
		replay(200, "text/event-stream", fixture(t, "vllm.sse"))(w, r)
	})
	m := newModel(t, b.URL, nil)
	for range 5 {
		if _, err := m.Infer(context.Background(), request(prompt)); err != nil {
			t.Fatal(err)
		}
	}
	if len(conns) != 1 {
		t.Errorf("5 sequential requests used %d connections, want 1", len(conns))
	}
}

func TestBadInputNeverReachesBackend(t *testing.T) {
	b := newBackend(t, replay(200, "text/event-stream", fixture(t, "openai.sse")))
	m := newModel(t, b.URL, func(c *Config) { c.MaxTokens = 64 })
	for _, in := range []string{`{"prompt":"x","max_tokens":65}`, `{"messages":[]}`, `{"prompt":"x","temperature":3}`} {
		if _, err := m.Infer(context.Background(), request(in)); !inference.IsInvalidInput(err) {
			t.Errorf("%s: error %v, want invalid input", in, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.reqs) != 0 {
		t.Errorf("the backend got %d requests", len(b.reqs))
	}
}

func TestNew(t *testing.T) {
	t.Setenv("MQTTINFER_TEST_BADKEY", testKey+"\nX-Injected: 1")
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{BaseURL: "http://127.0.0.1:11434/v1"}, "no model name"},
		{Config{BaseURL: "localhost:11434/v1", Model: "m"}, "must start with http:// or https://"},
		{Config{BaseURL: "127.0.0.1:11434", Model: "m"}, "not a valid URL"},
		{Config{BaseURL: "ftp://host/v1", Model: "m"}, "must start with http:// or https://"},
		{Config{BaseURL: "http:///v1", Model: "m"}, "has no host"},
		{Config{BaseURL: "http://h/v1?key=1", Model: "m"}, "no query or fragment"},
		{Config{BaseURL: "http://user:secret@h:%zz/v1", Model: "m"}, "not a valid URL"},
		{Config{BaseURL: "http://h/v1", Model: "m", Timeout: -time.Second}, "timeout is -1s"},
		{Config{BaseURL: "http://h/v1", Model: "m", IdleTimeout: -1}, "idle timeout"},
		{Config{BaseURL: "http://h/v1", Model: "m", MaxTokens: -5}, "max tokens is -5"},
		{Config{BaseURL: "http://h/v1", Model: "m", Cost: -1}, "cost is -1"},
		{Config{BaseURL: "http://h/v1", Model: "m", APIKeyEnv: "MQTTINFER_TEST_BADKEY"}, "MQTTINFER_TEST_BADKEY has a control character"},
	} {
		_, err := New(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tt.cfg, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), testKey) {
			t.Errorf("error %q shows a secret", err)
		}
	}
}

func TestInfo(t *testing.T) {
	t.Setenv("MQTTINFER_TEST_KEY", testKey)
	m := newModel(t, "https://api.example.test:8443", func(c *Config) { c.APIKeyEnv = "MQTTINFER_TEST_KEY"; c.Model = "gpt-4o-mini"; c.MaxTokens = 256 })
	info := m.Info()
	if info.Name != "chat" || info.Version != "1" || !info.Streaming || info.Cost != 256 || info.Runtime != "http" ||
		info.Source != "OpenAI-compatible server at api.example.test:8443, model gpt-4o-mini" || info.Unavailable != "" {
		t.Errorf("Info() = %+v", info)
	}
	for name, s := range map[string]json.RawMessage{"input": info.Input, "output": info.Output} {
		var v map[string]any
		if err := json.Unmarshal(s, &v); err != nil {
			t.Errorf("%s schema: %v", name, err)
		}
	}
	if !strings.Contains(string(info.Input), `"maximum": 256`) {
		t.Errorf("input schema does not cap max_tokens at 256")
	}
	m2 := newModel(t, "http://127.0.0.1:1", func(c *Config) { c.Cost = 8 })
	if c := m2.Info().Cost; c != 8 {
		t.Errorf("Cost %d, want 8", c)
	}
	if d := Describe(); d.Name != "chat" || !d.Streaming || d.Cost != DefaultMaxTokens || d.Source != "" {
		t.Errorf("Describe() = %+v", d)
	}
}

func TestCharge(t *testing.T) {
	m := newModel(t, "http://127.0.0.1:1", nil) // MaxTokens 512
	for _, tt := range []struct{ charged, completion, want int }{
		{512, 100, 100}, {512, 512, 512}, {512, 0, 1}, {512, 9999, 512},
		{20, 100, 4}, {20, 1, 1}, {20, 512, 20}, {0, 100, 0}, {512, -3, 1},
	} {
		if got := m.Charge(tt.charged, Usage{CompletionTokens: tt.completion}); got != tt.want {
			t.Errorf("Charge(%d, %d completion tokens) = %d, want %d", tt.charged, tt.completion, got, tt.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 11, 26, 10, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"2", 2 * time.Second}, {" 120 ", 2 * time.Minute}, {"0", 0}, {"-5", 0}, {"", 0}, {"soon", 0}, {"1.5", 0},
		{"Tue, 26 Nov 2024 10:00:30 GMT", 30 * time.Second},
		{"Tue, 26 Nov 2024 09:59:00 GMT", 0},
		{"99999999999999999999", 0},
		{"999999999", 24 * time.Hour},
	} {
		if got := parseRetryAfter(tt.v, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

func TestParseErrorBody(t *testing.T) {
	for _, tt := range []struct {
		body, msg, code string
		status          int
	}{
		{`{"error":{"message":"m","type":"t","param":null,"code":"c"}}`, "m", "c", 0},
		{`{"error":{"message":"m","type":"t","code":null}}`, "m", "t", 0},
		{`{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`, "Loading model", "unavailable_error", 503},
		{`{"error":"model 'x' not found"}`, "model 'x' not found", "", 0},
		{`{"object":"error","message":"m","type":"BadRequestError","param":null,"code":400}`, "m", "BadRequestError", 400},
		{`{"detail":"Not Found"}`, "Not Found", "", 0},
		{`{"foo":1}`, `{"foo":1}`, "", 0},
		{"  Internal Server Error\n", "Internal Server Error", "", 0},
		{`{"error":`, `{"error":`, "", 0},
	} {
		msg, code, status := parseErrorBody([]byte(tt.body))
		if msg != tt.msg || code != tt.code || status != tt.status {
			t.Errorf("parseErrorBody(%s) = %q, %q, %d; want %q, %q, %d", tt.body, msg, code, status, tt.msg, tt.code, tt.status)
		}
	}
}

func TestClean(t *testing.T) {
	t.Setenv("MQTTINFER_TEST_KEY", testKey)
	m := newModel(t, "http://127.0.0.1:1", func(c *Config) { c.APIKeyEnv = "MQTTINFER_TEST_KEY" })
	if got := m.clean("a\r\nb\x00c "+testKey+" \xff", 100); got != "a  b c [redacted] \uFFFD" {
		t.Errorf("clean = %q", got)
	}
	if got := m.clean(strings.Repeat("é", 10), 5); got != "éé..." {
		t.Errorf("clean cut = %q", got)
	}
}
