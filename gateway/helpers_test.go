package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/worker"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sumModel adds {"numbers": [...]} and says which device asked.
type sumModel struct{}

type sumOut struct {
	Sum    float64 `json:"sum"`
	Device string  `json:"device"`
}

func (sumModel) Info() inference.Info {
	return inference.Info{Name: "sum", Version: "1", Description: "adds numbers", Cost: 1,
		Input: json.RawMessage(`{"type":"object","properties":{"numbers":{"type":"array","items":{"type":"number"}}}}`)}
}

func (sumModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	var in struct {
		Numbers []float64 `json:"numbers"`
		// Down plays a model whose backend is out of service for Down ms.
		Down int64 `json:"down"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil || len(in.Numbers) == 0 {
		return nil, inference.InvalidInput("input.numbers: want a non-empty array of numbers")
	}
	if in.Down > 0 {
		return nil, &inference.UnavailableError{Msg: "backend down", RetryAfter: time.Duration(in.Down) * time.Millisecond}
	}
	out := sumOut{Device: req.Device}
	for _, n := range in.Numbers {
		out.Sum += n
	}
	return out, nil
}

// wordsModel streams the words of {"text": "..."} one by one; with "wait"
// it stops after the first word until released or canceled, and reports a
// cancellation on canceled.
type wordsModel struct {
	release  chan struct{}
	waiting  chan struct{} // a request started to wait
	canceled chan struct{} // a waiting request was canceled
}

type wordsOut struct {
	Words int `json:"words"`
}

// Consumed reports the words as usage, and a quarter of the cost per word
// (at most all of it) as the share used.
func (o wordsOut) Consumed() (any, float64) {
	return map[string]int{"words": o.Words}, min(1, float64(o.Words)/4)
}

func (m *wordsModel) Info() inference.Info {
	return inference.Info{Name: "words", Version: "1", Description: "streams words", Cost: 1, Streaming: true}
}

func (m *wordsModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	return m.InferStream(ctx, req, func(any) error { return nil })
}

func (m *wordsModel) InferStream(ctx context.Context, req inference.Request, emit func(any) error) (any, error) {
	var in struct {
		Text string `json:"text"`
		Wait bool   `json:"wait"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil || in.Text == "" {
		return nil, inference.InvalidInput("input.text: want a non-empty string")
	}
	words := strings.Fields(in.Text)
	for i, w := range words {
		if err := emit(map[string]string{"word": w}); err != nil {
			return nil, err
		}
		if i == 0 && in.Wait {
			select {
			case m.waiting <- struct{}{}:
			default:
			}
			select {
			case <-m.release:
			case <-ctx.Done():
				m.canceled <- struct{}{}
				return nil, ctx.Err()
			}
		}
	}
	return wordsOut{Words: len(words)}, nil
}

// env is a gateway on a real socket with a real pool and real models.
type env struct {
	srv     *httptest.Server
	pool    *worker.Pool
	reg     *prometheus.Registry
	words   *wordsModel
	limiter *throttle.Limiter
	models  *inference.Registry
}

type envConfig struct {
	workers, queue int
	throttle       *throttle.Config
	opts           func(*Options)
}

// fixedClock is a throttle clock that never moves, so that buckets only
// change by what the requests take and refunds give back.
func fixedClock() time.Time { return time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC) }

func newEnv(t testing.TB, cfg envConfig) *env {
	t.Helper()
	e := &env{
		reg:    prometheus.NewRegistry(),
		words:  &wordsModel{release: make(chan struct{}), waiting: make(chan struct{}, 8), canceled: make(chan struct{}, 8)},
		models: &inference.Registry{},
	}
	for _, m := range []inference.Model{sumModel{}, e.words} {
		if err := e.models.Register(m); err != nil {
			t.Fatal(err)
		}
	}
	m := metrics.New(e.reg)
	core := &worker.Core{Models: e.models, DefaultDeadline: time.Minute, Metrics: m}
	if cfg.queue == 0 {
		cfg.queue = 16
	}
	e.pool = worker.NewPool(core, max(cfg.workers, 1), cfg.queue)
	e.pool.Start(nil)
	t.Cleanup(func() { _ = e.pool.Stop(context.Background()) })
	if cfg.throttle != nil {
		var err error
		if e.limiter, err = throttle.New(*cfg.throttle); err != nil {
			t.Fatal(err)
		}
	}
	// Behind a trusted proxy, tests play several clients from one address
	// with X-Forwarded-For.
	opts := Options{Gatherer: e.reg, Pool: e.pool, Models: e.models, Throttle: e.limiter, Metrics: m, MaxBodySize: 4096, TrustProxy: true}
	if cfg.opts != nil {
		cfg.opts(&opts)
	}
	e.srv = httptest.NewServer(New(opts))
	t.Cleanup(e.srv.Close)
	return e
}

// do sends a request and returns the response with its body read.
func (e *env) do(t testing.TB, method, path string, body []byte, header ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// post sends a JSON inference request and decodes the api.Result.
func (e *env) post(t testing.TB, path, body string, header ...string) (*http.Response, api.Result) {
	t.Helper()
	resp, b := e.do(t, http.MethodPost, path, []byte(body), append([]string{"Content-Type", "application/json"}, header...)...)
	var res api.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("POST %s: %d %q is not a result: %v", path, resp.StatusCode, b, err)
	}
	return resp, res
}

// counter reads a counter of the env's registry; 0 when it has no sample.
func (e *env) counter(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// sseEvent is one Server-Sent Event as a client sees it.
type sseEvent struct {
	Event, ID, Data string
}

// sseReader is a minimal SSE client: it reads events, skipping comments.
type sseReader struct{ r *bufio.Reader }

func newSSEReader(r io.Reader) *sseReader { return &sseReader{r: bufio.NewReader(r)} }

// next returns the next event, or io.EOF at the end of the stream.
func (s *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	var data []string
	seen := false
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" && !seen {
				return ev, io.EOF
			}
			return ev, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		switch {
		case line == "":
			if !seen {
				continue
			}
			ev.Data = strings.Join(data, "\n")
			return ev, nil
		case strings.HasPrefix(line, ":"):
			continue
		}
		seen = true
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Event = value
		case "id":
			ev.ID = value
		case "data":
			data = append(data, value)
		}
	}
}

// streamEvent decodes an SSE event's data.
func streamEvent(t testing.TB, ev sseEvent) api.StreamEvent {
	t.Helper()
	var se api.StreamEvent
	if err := json.Unmarshal([]byte(ev.Data), &se); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	return se
}

// readStream reads every event of a stream to its end and checks the
// stream's invariants: SSE fields agree with the data, seq counts up from 0,
// exactly one final event and it is the last.
func readStream(t testing.TB, body io.Reader) []api.StreamEvent {
	t.Helper()
	rd := newSSEReader(body)
	var evs []api.StreamEvent
	for {
		ev, err := rd.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read stream: %v", err)
		}
		se := streamEvent(t, ev)
		if se.Event != ev.Event || ev.ID != itoa(se.Seq) {
			t.Errorf("SSE event %q id %q carries event %q seq %d", ev.Event, ev.ID, se.Event, se.Seq)
		}
		if se.Seq != len(evs) {
			t.Errorf("event %d has seq %d", len(evs), se.Seq)
		}
		if len(evs) > 0 && evs[len(evs)-1].Event != api.EventDelta {
			t.Errorf("event %+v after the final event", se)
		}
		evs = append(evs, se)
	}
	if len(evs) == 0 || evs[len(evs)-1].Event == api.EventDelta {
		t.Fatalf("stream without a final event: %+v", evs)
	}
	return evs
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
