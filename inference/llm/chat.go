package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

// Defaults of Config.
const (
	DefaultAPIKeyEnv   = "MQTTINFER_CHAT_API_KEY"
	DefaultTimeout     = 2 * time.Minute
	DefaultIdleTimeout = 30 * time.Second
	DefaultMaxTokens   = 512
)

// Config says which server and model to use. The zero value of each
// optional field means its default.
type Config struct {
	// BaseURL is the server's OpenAI API root, http or https, e.g.
	// "http://127.0.0.1:11434/v1" (Ollama), "http://127.0.0.1:8080/v1"
	// (llama.cpp), "http://127.0.0.1:8000/v1" (vLLM) or
	// "https://api.openai.com/v1". Requests go to BaseURL + "/chat/completions".
	BaseURL string
	// Model is the model name the server knows, e.g. "llama3.2:1b". Required.
	Model string
	// APIKeyEnv is the name of the environment variable holding the API
	// key; default DefaultAPIKeyEnv. The key is read once, by New, and sent
	// as "Authorization: Bearer <key>"; when the variable is empty or unset
	// no Authorization header is sent (Ollama, llama.cpp and vLLM need none
	// unless started with one).
	APIKeyEnv string
	// Timeout bounds a whole request, from sending it to the last chunk;
	// default DefaultTimeout (2 minutes).
	Timeout time.Duration
	// IdleTimeout bounds the gap between two reads of the response stream
	// once its headers have arrived (keep-alive comments count as data);
	// default DefaultIdleTimeout (30 seconds). Before the headers, only
	// Timeout applies: a server may take long to load a model.
	IdleTimeout time.Duration
	// MaxTokens is the default and the cap of an input's max_tokens;
	// default DefaultMaxTokens (512).
	MaxTokens int
	// Cost is the throttle tokens a request is charged up front, Info's
	// Cost; default MaxTokens, one throttle token per token that may be
	// generated. Settle to actual use with Charge.
	Cost int
	// HTTPClient sends the requests; nil means a client of New's own (a
	// clone of http.DefaultTransport, so the usual proxy variables apply).
	// A client with a Timeout shorter than Timeout cuts streams short.
	HTTPClient *http.Client
}

// Delta is one piece of the generated text, emitted in order while the
// answer streams.
type Delta struct {
	Text string `json:"text"`
}

// Usage is the token count of one request, as the backend reported it (or
// as estimated, see Output.UsageEstimated).
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Output is the whole answer to one request.
type Output struct {
	// Text is the generated text: all deltas joined.
	Text string `json:"text"`
	// FinishReason is why generation stopped, as the backend said ("stop",
	// "length", ...); "" when it did not say.
	FinishReason string `json:"finish_reason"`
	// Usage is the backend's token count.
	Usage Usage `json:"usage"`
	// share is the part of the up-front throttle cost really used (Consumed).
	share float64
	// UsageEstimated is true when the backend sent no usage: then
	// CompletionTokens is the number of chunks that carried generated text
	// (one token each on Ollama, llama.cpp and OpenAI; vLLM may batch) and
	// PromptTokens is the prompt's bytes / 4, a rough guess.
	UsageEstimated bool `json:"usage_estimated,omitempty"`
	// Model is the model that answered, as the backend named it.
	Model string `json:"model"`
}

// Model is the chat model: a client of one OpenAI-compatible server. It is
// safe for concurrent use.
type Model struct {
	cfg       Config
	endpoint  string
	host      string
	key       string
	client    *http.Client
	ownClient bool
	info      inference.Info
	now       func() time.Time
}

var _ inference.Streamer = (*Model)(nil)

// New checks cfg, reads the API key from the environment and returns the
// model. It does not contact the server.
func New(cfg Config) (*Model, error) {
	if cfg.APIKeyEnv == "" {
		cfg.APIKeyEnv = DefaultAPIKeyEnv
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"timeout", &cfg.Timeout, DefaultTimeout}, {"idle timeout", &cfg.IdleTimeout, DefaultIdleTimeout}} {
		if *d.v < 0 {
			return nil, fmt.Errorf("chat: the %s is %s; give a positive duration, or 0 for the default %s", d.name, *d.v, d.def)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.MaxTokens < 0 {
		return nil, fmt.Errorf("chat: max tokens is %d; give a positive number, or 0 for the default %d", cfg.MaxTokens, DefaultMaxTokens)
	}
	if cfg.MaxTokens == 0 {
		cfg.MaxTokens = DefaultMaxTokens
	}
	if cfg.Cost < 0 {
		return nil, fmt.Errorf("chat: cost is %d; give a positive number of throttle tokens, or 0 for max tokens (%d)", cfg.Cost, cfg.MaxTokens)
	}
	if cfg.Cost == 0 {
		cfg.Cost = cfg.MaxTokens
	}
	if strings.TrimSpace(cfg.Model) == "" {
		return nil, errors.New("chat: no model name: set the name the server knows the model by, e.g. llama3.2:1b")
	}

	u, err := url.Parse(strings.TrimRight(strings.TrimSpace(cfg.BaseURL), "/"))
	if err != nil {
		// url.Error repeats the URL, which may hold credentials.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("chat: the base URL is not a valid URL (%v); it must look like http://127.0.0.1:11434/v1", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("chat: the base URL %q must start with http:// or https://, like http://127.0.0.1:11434/v1", u.Redacted())
	case u.Host == "":
		return nil, fmt.Errorf("chat: the base URL %q has no host", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("chat: the base URL %q must have no query or fragment: /chat/completions is appended to it", u.Redacted())
	}

	key := strings.TrimSpace(os.Getenv(cfg.APIKeyEnv))
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c == 0x7f {
			return nil, fmt.Errorf("chat: the API key in the environment variable %s has a control character; it must be a single line", cfg.APIKeyEnv)
		}
	}

	m := &Model{
		cfg:      cfg,
		endpoint: u.String() + "/chat/completions",
		host:     u.Host,
		key:      key,
		client:   cfg.HTTPClient,
		now:      time.Now,
	}
	if m.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64 // one per concurrent stream, reused
		m.client = &http.Client{Transport: tr}
		m.ownClient = true
	}
	m.info = Describe()
	m.info.Input = inputSchema(cfg.MaxTokens)
	m.info.Cost = cfg.Cost
	m.info.Source = fmt.Sprintf("OpenAI-compatible server at %s, model %s", u.Host, cfg.Model)
	return m, nil
}

// Describe is the catalog entry of the chat model with the default
// MaxTokens and no server, for a node where chat is not configured.
func Describe() inference.Info {
	return inference.Info{
		Name:        "chat",
		Version:     "1",
		Description: "LLM chat through an OpenAI-compatible Chat Completions server (Ollama, llama.cpp, vLLM, OpenAI), streamed as text deltas.",
		Input:       inputSchema(DefaultMaxTokens),
		Output:      outputSchema,
		Cost:        DefaultMaxTokens,
		Streaming:   true,
		Runtime:     "http",
	}
}

// Info describes the model for the catalog. Cost is the throttle tokens
// charged up front (Config.Cost, by default MaxTokens); Charge gives what
// a finished request actually used.
func (m *Model) Info() inference.Info { return m.info }

// Charge returns the throttle tokens a request used, to settle the
// device's bucket after the throttle charged it up front: charged ×
// u.CompletionTokens / MaxTokens, rounded up, at least 1 and at most
// charged. charged is what was taken (Info().Cost or a configured
// override), so with the default Cost the result is CompletionTokens.
func (m *Model) Charge(charged int, u Usage) int {
	if charged <= 0 {
		return 0
	}
	used := (int64(charged)*int64(max(u.CompletionTokens, 0)) + int64(m.cfg.MaxTokens) - 1) / int64(m.cfg.MaxTokens)
	return int(min(max(used, 1), int64(charged)))
}

// Consumed reports the usage and the share of the up-front throttle cost
// the request really used (inference.Metered).
func (o Output) Consumed() (any, float64) { return o.Usage, o.share }

// Close releases the idle connections of the model's own HTTP client. The
// model must not be used after.
func (m *Model) Close() error {
	if m.ownClient {
		m.client.CloseIdleConnections()
	}
	return nil
}

// Infer answers req as a whole. It streams from the backend all the same,
// so IdleTimeout still catches a stuck server.
func (m *Model) Infer(ctx context.Context, req inference.Request) (any, error) {
	return m.InferStream(ctx, req, func(any) error { return nil })
}

var (
	errTimeout = errors.New("request timeout")
	errIdle    = errors.New("idle timeout")
)

// bytesPerToken bounds the text a backend may send per requested token; a
// server that goes past it (and its 64 KiB allowance) is cut off.
const bytesPerToken = 256

// drainWindow is how long a finished stream is given to reach its end, so
// that its connection can be reused; past it the connection is dropped.
const drainWindow = 250 * time.Millisecond

type chatRequest struct {
	Model         string        `json:"model"`
	Messages      []message     `json:"messages"`
	Stream        bool          `json:"stream"`
	StreamOptions streamOptions `json:"stream_options"`
	MaxTokens     int           `json:"max_tokens"`
	Temperature   *float64      `json:"temperature,omitempty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// chunk is a chat.completion.chunk, or a whole chat.completion, or an
// error object in their place.
type chunk struct {
	Model   string `json:"model"`
	Choices []struct {
		Delta struct {
			Content          string `json:"content"`
			ReasoningContent string `json:"reasoning_content"` // llama.cpp, vLLM, DeepSeek
			Reasoning        string `json:"reasoning"`         // Ollama
		} `json:"delta"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage  *Usage          `json:"usage"`
	Error  json.RawMessage `json:"error"`
	Object string          `json:"object"`
}

func (c *chunk) isError() bool {
	return (len(c.Error) > 0 && !isNull(c.Error)) || c.Object == "error"
}

// InferStream sends req to the backend as a streaming Chat Completions
// request and calls emit (if not nil) with a Delta for each piece of text,
// in order, as it arrives. It returns the whole Output once the backend has
// finished.
//
// It stops the backend request at once when ctx is done, when emit returns
// an error (returned wrapped), or on any failure. Errors: an
// inference.InvalidInput for a bad input; a *BackendError for what the
// backend answered; ErrBackendUnreachable or ErrStreamBroken wrapped with
// detail; ctx's error, wrapped, when ctx ended it.
func (m *Model) InferStream(ctx context.Context, req inference.Request, emit func(delta any) error) (any, error) {
	out, err := m.inferStream(ctx, req, emit)
	if err != nil {
		return nil, unavailable(err)
	}
	o := out.(Output)
	o.share = float64(m.Charge(m.info.Cost, o.Usage)) / float64(max(m.info.Cost, 1))
	return o, nil
}

// unavailable wraps the errors that mean the backend cannot answer now (not
// the input's fault) in an *inference.UnavailableError, for 503
// model_unavailable; errors of the input and the caller's own context end
// pass through.
func unavailable(err error) error {
	var be *BackendError
	switch {
	case errors.As(err, &be):
		if be.InvalidInput() {
			return err
		}
		return &inference.UnavailableError{Msg: be.Error(), RetryAfter: be.RetryAfter, Err: err}
	case errors.Is(err, ErrBackendUnreachable), errors.Is(err, ErrStreamBroken), errors.Is(err, ErrEventTooLarge):
		return &inference.UnavailableError{Msg: err.Error(), Err: err}
	}
	return err
}

func (m *Model) inferStream(ctx context.Context, req inference.Request, emit func(delta any) error) (any, error) {
	in, err := decodeInput(req.Input, req.Params, m.cfg.MaxTokens)
	if err != nil {
		return nil, err
	}
	if emit == nil {
		emit = func(any) error { return nil }
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("chat: %w", err)
	}
	maxTokens := in.maxTokens
	if maxTokens == 0 {
		maxTokens = m.cfg.MaxTokens
	}
	body, err := json.Marshal(chatRequest{
		Model:         m.cfg.Model,
		Messages:      in.messages,
		Stream:        true,
		StreamOptions: streamOptions{IncludeUsage: true},
		MaxTokens:     maxTokens,
		Temperature:   in.temperature,
	})
	if err != nil {
		return nil, fmt.Errorf("chat: encode the request: %w", err)
	}

	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx, stop := context.WithTimeoutCause(ctx, m.cfg.Timeout, errTimeout)
	defer stop()

	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, m.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("chat: build the request: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	if m.key != "" {
		hreq.Header.Set("Authorization", "Bearer "+m.key)
	}
	resp, err := m.client.Do(hreq)
	if err != nil {
		// *url.Error names the endpoint, which holds no key.
		return nil, m.stopped(parent, ctx, 0, fmt.Errorf("%w: %v", ErrBackendUnreachable, err))
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if err != nil && (parent.Err() != nil || ctx.Err() != nil) {
			return nil, m.stopped(parent, ctx, 0, err)
		}
		return nil, m.backendError(resp.StatusCode, resp.Header, b, m.now())
	}

	idle := time.AfterFunc(m.cfg.IdleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()
	r := &idleReader{r: resp.Body, t: idle, d: m.cfg.IdleTimeout}
	s := stream{m: m, in: &in, emit: emit, maxText: maxTokens*bytesPerToken + 64<<10}
	s.out.Model = m.cfg.Model

	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "text/html" {
		return nil, fmt.Errorf("%w: %s answered a web page (text/html), not an event stream: the base URL should be the API root, which usually ends in /v1", ErrStreamBroken, m.host)
	}
	if mt == "application/json" {
		// The server ignored "stream": true and sent the whole answer.
		b, err := io.ReadAll(io.LimitReader(r, int64(s.maxText)+1<<20))
		if err != nil {
			return nil, m.stopped(parent, ctx, 0, fmt.Errorf("%w: the connection dropped while reading the answer: %v", ErrStreamBroken, err))
		}
		if err := s.take(b, true); err != nil {
			return nil, err
		}
		return s.output(), nil
	}

	sse := NewSSEReader(r)
	for {
		ev, err := sse.Next()
		if err == io.EOF && s.out.FinishReason != "" {
			break // a finished answer without "data: [DONE]" (ik_llama.cpp, some proxies)
		}
		if err != nil {
			return nil, m.stopped(parent, ctx, s.deltas, s.broken(err))
		}
		if ev.Type == "error" {
			return nil, m.streamError([]byte(ev.Data))
		}
		if ev.Type != "" && ev.Type != "message" {
			continue // not part of Chat Completions; skip it as browsers would
		}
		if ev.Data == "" {
			continue // an empty event, a keep-alive of some proxies
		}
		if ev.Data == "[DONE]" {
			// Read to the end of the response so the connection can be
			// reused; a server that holds it open loses it.
			idle.Reset(drainWindow)
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			break
		}
		if err := s.take([]byte(ev.Data), false); err != nil {
			return nil, err
		}
	}
	return s.output(), nil
}

// stopped turns the error of a request that ended early into the one to
// return: the caller's context error when ctx ended it, a broken stream
// when Timeout or IdleTimeout did, err otherwise.
func (m *Model) stopped(parent, ctx context.Context, deltas int, err error) error {
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("chat: request stopped after %d deltas: %w", deltas, perr)
	}
	switch context.Cause(ctx) {
	case errTimeout:
		return fmt.Errorf("%w: no complete answer from %s within the timeout of %s (%d deltas arrived)", ErrStreamBroken, m.host, m.cfg.Timeout, deltas)
	case errIdle:
		return fmt.Errorf("%w: nothing from %s for %s, the idle timeout (%d deltas arrived)", ErrStreamBroken, m.host, m.cfg.IdleTimeout, deltas)
	}
	return err
}

// stream is the state of one answer being read.
type stream struct {
	m       *Model
	in      *input
	emit    func(any) error
	maxText int

	text   strings.Builder
	out    Output
	usage  *Usage
	deltas int // chunks that carried generated text or reasoning
}

// take handles one chunk (or, when whole, a whole chat.completion).
func (s *stream) take(data []byte, whole bool) error {
	var c chunk
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("%w: the backend sent something that is not a chat chunk (%v): %s", ErrStreamBroken, err, s.m.clean(string(data), 128))
	}
	if c.isError() {
		return s.m.streamError(data)
	}
	if c.Model != "" {
		s.out.Model = c.Model
	}
	if c.Usage != nil {
		u := *c.Usage
		s.usage = &u
	}
	if len(c.Choices) == 0 {
		return nil // the usage chunk, or a keep-alive of some proxies
	}
	ch := &c.Choices[0] // n is 1: one choice, index 0
	if ch.FinishReason != "" {
		s.out.FinishReason = ch.FinishReason
	}
	text := ch.Delta.Content
	if whole {
		text = ch.Message.Content
	}
	if text != "" || ch.Delta.ReasoningContent != "" || ch.Delta.Reasoning != "" {
		s.deltas++
	}
	if text == "" {
		return nil
	}
	if s.text.Len()+len(text) > s.maxText {
		return fmt.Errorf("%w: the backend sent more than %d bytes of text, far more than max_tokens allows", ErrStreamBroken, s.maxText)
	}
	s.text.WriteString(text)
	if err := s.emit(Delta{Text: text}); err != nil {
		return fmt.Errorf("chat: a delta could not be delivered, stopped the backend: %w", err)
	}
	return nil
}

// broken explains a read error of the stream.
func (s *stream) broken(err error) error {
	switch {
	case err == io.EOF:
		return fmt.Errorf("%w: %s closed the stream after %d deltas without a finish_reason or data: [DONE]", ErrStreamBroken, s.m.host, s.deltas)
	case errors.Is(err, ErrEventTooLarge):
		return fmt.Errorf("%w: %s sent an event line over %d bytes", ErrStreamBroken, s.m.host, DefaultMaxEventBytes)
	}
	return fmt.Errorf("%w: the connection to %s dropped after %d deltas: %v", ErrStreamBroken, s.m.host, s.deltas, err)
}

func (s *stream) output() Output {
	out := s.out
	out.Text = s.text.String()
	if s.usage != nil {
		out.Usage = *s.usage
	} else {
		n := 0
		for _, msg := range s.in.messages {
			n += len(msg.Content)
		}
		out.Usage = Usage{PromptTokens: (n + 3) / 4, CompletionTokens: s.deltas}
		out.UsageEstimated = true
	}
	if out.Usage.TotalTokens == 0 {
		out.Usage.TotalTokens = out.Usage.PromptTokens + out.Usage.CompletionTokens
	}
	return out
}

// idleReader resets the idle timer t to d after every read that returns data.
type idleReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.Reset(r.d)
	}
	return n, err
}
