package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
	"go.uber.org/goleak"
)

// openStream starts a streamed request; the caller reads and closes the body.
func (e *env) openStream(t testing.TB, ctx context.Context, path, body string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// waitFor fails the test unless ch delivers within a generous bound; the
// bound only turns a hang into a failure, it synchronises nothing.
func waitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestSSE(t *testing.T) {
	e := newEnv(t, envConfig{})
	tests := []struct {
		name   string
		path   string
		body   string
		header []string
	}{
		{"Accept", "/v1/models/words/infer", `{"id":"s1","input":{"text":"one two three"}}`, []string{"Accept", "text/event-stream"}},
		{"query", "/v2/models/words/infer?stream=true", `{"id":"s1","input":{"text":"one two three"}}`, nil},
		{"body", "/v2/models/words/infer", `{"id":"s1","stream":true,"input":{"text":"one two three"}}`, nil},
		{"Accept among others", "/v2/models/words/infer", `{"id":"s1","input":{"text":"one two three"}}`, []string{"Accept", "application/json;q=0.9, text/event-stream"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.openStream(t, context.Background(), tt.path, tt.body, tt.header...)
			defer resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != 200 || h.Get("Content-Type") != "text/event-stream" || h.Get("Cache-Control") != "no-cache" || h.Get("X-Accel-Buffering") != "no" {
				t.Fatalf("%d %v", resp.StatusCode, h)
			}
			evs := readStream(t, resp.Body)
			if len(evs) != 4 {
				t.Fatalf("%d events: %+v", len(evs), evs)
			}
			for i, w := range []string{"one", "two", "three"} {
				if ev := evs[i]; ev.Event != api.EventDelta || ev.ID != "s1" || ev.Model != "words" || string(ev.Delta) != `{"word":"`+w+`"}` {
					t.Errorf("delta %d: %+v", i, ev)
				}
			}
			if done := evs[3]; done.Event != api.EventDone || done.Status != 200 || string(done.Output) != `{"words":3}` || string(done.Usage) != `{"words":3}` {
				t.Errorf("done: %+v", done)
			}
		})
	}

	// ?stream=false wins over Accept: one result.
	resp, res := e.post(t, "/v1/models/words/infer?stream=false", `{"id":"j","input":{"text":"a b"}}`, "Accept", "text/event-stream")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || string(res.Output) != `{"words":2}` {
		t.Errorf("stream=false: %d %+v", resp.StatusCode, res)
	}

	// A stream that fails at once is still a stream: one error event.
	sresp := e.openStream(t, context.Background(), "/v1/models/words/infer", `{"id":"bad","input":{"text":""}}`, "Accept", "text/event-stream")
	defer sresp.Body.Close()
	evs := readStream(t, sresp.Body)
	if sresp.StatusCode != 200 || len(evs) != 1 || evs[0].Event != api.EventError || evs[0].Status != 422 || evs[0].Error.Type != api.InvalidInput || evs[0].ID != "bad" {
		t.Errorf("failed stream: %d %+v", sresp.StatusCode, evs)
	}
	if n := e.counter(t, "mqttinfer_requests_total", map[string]string{"version": "v1", "model": "words", "status": "422"}); n != 1 {
		t.Errorf("failed stream counted %v times", n)
	}
}

// TestSSEClientGoesAway: a client that closes its stream cancels the
// request: the model sees its context end, the pool counts 499, the
// client's in-flight slot is freed and no goroutine is left behind.
func TestSSEClientGoesAway(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	e := newEnv(t, envConfig{workers: 2, throttle: &throttle.Config{Default: throttle.Limits{MaxInFlight: 4}}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := e.openStream(t, ctx, "/v1/models/words/infer", `{"id":"gone","input":{"text":"a b c","wait":true}}`, "Accept", "text/event-stream")
	rd := newSSEReader(resp.Body)
	first, err := rd.next()
	if err != nil || first.Event != api.EventDelta {
		t.Fatalf("first event %+v: %v", first, err)
	}
	waitFor(t, e.words.waiting, "the model to wait")
	cancel()
	resp.Body.Close()
	waitFor(t, e.words.canceled, "the model's context to end")

	// The next request of the same client for the same model runs after
	// the canceled one has finished (the pool keeps each client's order).
	_, res := e.post(t, "/v1/models/words/infer", `{"id":"next","input":{"text":"x"}}`)
	if res.Status != 200 {
		t.Fatalf("next request: %+v", res)
	}
	if n := e.counter(t, "mqttinfer_requests_total", map[string]string{"version": "v1", "model": "words", "status": "499"}); n != 1 {
		t.Errorf("canceled stream counted %v times as 499", n)
	}
	if d := e.limiter.Peek("ip-127-0-0-1", "words"); d.InFlight != 1 {
		t.Errorf("%d requests still in flight after both ended", d.InFlight-1)
	}

	// The same for a request that is not streamed.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+"/v1/models/words/infer", strings.NewReader(`{"id":"gone2","input":{"text":"a b","wait":true}}`))
	errs := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errs <- err
	}()
	waitFor(t, e.words.waiting, "the model to wait")
	cancel()
	waitFor(t, e.words.canceled, "the model's context to end")
	if err := waitFor(t, errs, "the client to give up"); err == nil {
		t.Error("a canceled client got an answer")
	}
	_, res = e.post(t, "/v1/models/words/infer", `{"id":"next2","input":{"text":"x"}}`)
	if n := e.counter(t, "mqttinfer_requests_total", map[string]string{"version": "v1", "model": "words", "status": "499"}); n != 2 || res.Status != 200 {
		t.Errorf("canceled requests counted %v times as 499, want 2", n)
	}

	e.srv.Close()
	if err := e.pool.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.srv.Client().CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

// TestCancel: a client cancels its own running stream by id from another
// connection; another client cannot.
func TestCancel(t *testing.T) {
	e := newEnv(t, envConfig{workers: 2})
	resp := e.openStream(t, context.Background(), "/v2/models/words/infer", `{"id":"c1","input":{"text":"a b","wait":true}}`, "Accept", "text/event-stream", "X-Forwarded-For", "10.0.0.1")
	defer resp.Body.Close()
	rd := newSSEReader(resp.Body)
	if ev, err := rd.next(); err != nil || ev.Event != api.EventDelta {
		t.Fatalf("first event %+v: %v", ev, err)
	}

	if r, res := e.post(t, "/v2/models/words/infer", `{"id":"c1","cancel":true}`, "X-Forwarded-For", "10.0.0.2"); r.StatusCode != 400 {
		t.Errorf("another client canceled: %d %+v", r.StatusCode, res)
	}
	r, res := e.post(t, "/v2/models/words/infer", `{"id":"c1","cancel":true}`, "X-Forwarded-For", "10.0.0.1")
	if r.StatusCode != 200 || string(res.Output) != `{"canceled":true}` || res.ID != "c1" {
		t.Fatalf("cancel: %d %+v", r.StatusCode, res)
	}
	ev, err := rd.next()
	if err != nil {
		t.Fatal(err)
	}
	if se := streamEvent(t, ev); se.Event != api.EventError || se.Status != 499 || se.Error.Type != api.Canceled || se.Seq != 1 || ev.ID != "1" {
		t.Errorf("after cancel: %+v", se)
	}
	if ev, err := rd.next(); err == nil {
		t.Errorf("event after the final one: %+v", ev)
	}
	if r, _ := e.post(t, "/v2/models/words/infer", `{"id":"c1","cancel":true}`, "X-Forwarded-For", "10.0.0.1"); r.StatusCode != 400 {
		t.Errorf("cancel of a finished request: %d", r.StatusCode)
	}
}

func TestThrottle(t *testing.T) {
	e := newEnv(t, envConfig{throttle: &throttle.Config{
		Default: throttle.Limits{Rate: 1, Burst: 3},
		Costs:   map[string]int{"words": 2},
		Now:     fixedClock,
	}})
	const policy = `"default";q=3;w=3`
	check := func(t *testing.T, resp *http.Response, res api.Result, status int, ratelimit string, body api.RateLimit) {
		t.Helper()
		if resp.StatusCode != status || res.Status != status {
			t.Errorf("status %d (body %d), want %d: %+v", resp.StatusCode, res.Status, status, res.Error)
		}
		if p := resp.Header.Get("RateLimit-Policy"); p != policy {
			t.Errorf("RateLimit-Policy %q, want %q", p, policy)
		}
		if rl := resp.Header.Get("RateLimit"); rl != ratelimit {
			t.Errorf("RateLimit %q, want %q", rl, ratelimit)
		}
		if res.RateLimit == nil || *res.RateLimit != body {
			t.Errorf("ratelimit in the body %+v, want %+v", res.RateLimit, body)
		}
	}
	sum := `{"input":{"numbers":[1]}}`
	alpha := []string{"X-Forwarded-For", "10.0.0.1"}

	for i, want := range []struct {
		header string
		body   api.RateLimit
	}{
		{`"default";r=2;t=1`, api.RateLimit{Limit: 3, Remaining: 2, ResetMS: 1000}},
		{`"default";r=1;t=2`, api.RateLimit{Limit: 3, Remaining: 1, ResetMS: 2000}},
		{`"default";r=0;t=3`, api.RateLimit{Limit: 3, Remaining: 0, ResetMS: 3000}},
	} {
		resp, res := e.post(t, "/v1/models/sum/infer", sum, alpha...)
		t.Run("allowed "+itoa(i), func(t *testing.T) { check(t, resp, res, 200, want.header, want.body) })
	}

	resp, res := e.post(t, "/v1/models/sum/infer", `{"id":"over","input":{"numbers":[1]}}`, alpha...)
	check(t, resp, res, 429, `"default";r=0;t=3`, api.RateLimit{Limit: 3, Remaining: 0, ResetMS: 3000})
	if resp.Header.Get("Retry-After") != "1" || res.Error == nil || res.Error.Type != api.RateLimited || res.Error.RetryAfterMS != 1000 || res.ID != "over" {
		t.Errorf("429: Retry-After %q, %+v", resp.Header.Get("Retry-After"), res)
	}
	if !strings.Contains(res.Error.Message, "ip-10-0-0-1") {
		t.Errorf("429 message %q: want the client id", res.Error.Message)
	}

	// A request refused before the throttle costs nothing and still tells
	// the client where it stands.
	resp, res = e.post(t, "/v1/models/sum/infer", `{"input":`, alpha...)
	check(t, resp, res, 400, `"default";r=0;t=3`, api.RateLimit{Limit: 3, Remaining: 0, ResetMS: 3000})

	// Other clients have their own buckets.
	resp, res = e.post(t, "/v2/models/sum/infer", sum, "X-Forwarded-For", "10.0.0.2")
	check(t, resp, res, 200, `"default";r=2;t=1`, api.RateLimit{Limit: 3, Remaining: 2, ResetMS: 1000})
	resp, res = e.post(t, "/v2/models/sum/infer", sum)
	check(t, resp, res, 200, `"default";r=2;t=1`, api.RateLimit{Limit: 3, Remaining: 2, ResetMS: 1000})

	// A batch is charged as n inputs; one larger than the burst can never
	// pass: 413, and it takes nothing.
	gamma := []string{"X-Forwarded-For", "10.0.0.3"}
	resp, res = e.post(t, "/v2/models/sum/infer", `{"inputs":[{"numbers":[1]},{"numbers":[1]},{"numbers":[1]},{"numbers":[1]}]}`, gamma...)
	check(t, resp, res, 413, `"default";r=3;t=0`, api.RateLimit{Limit: 3, Remaining: 3, ResetMS: 0})
	if res.Error == nil || res.Error.Type != api.PayloadTooLarge {
		t.Errorf("batch over the burst: %+v", res.Error)
	}
	resp, res = e.post(t, "/v2/models/sum/infer", `{"inputs":[{"numbers":[1]},{"numbers":[2]}]}`, gamma...)
	check(t, resp, res, 200, `"default";r=1;t=2`, api.RateLimit{Limit: 3, Remaining: 1, ResetMS: 2000})

	// A metered stream costs the model's cost up front (2) and is settled
	// to the share it used (1 word, a quarter, rounded up to 1 token): the
	// next request sees the other token back.
	delta := []string{"X-Forwarded-For", "10.0.0.4"}
	sresp := e.openStream(t, context.Background(), "/v1/models/words/infer", `{"input":{"text":"hello"}}`, append(delta, "Accept", "text/event-stream")...)
	if sresp.Header.Get("RateLimit") != `"default";r=1;t=2` || sresp.Header.Get("RateLimit-Policy") != policy {
		t.Errorf("stream headers: %v", sresp.Header)
	}
	evs := readStream(t, sresp.Body)
	sresp.Body.Close()
	if last := evs[len(evs)-1]; last.Status != 200 || last.RateLimit == nil || last.RateLimit.Remaining != 1 {
		t.Errorf("final event %+v", last)
	}
	resp, res = e.post(t, "/v1/models/sum/infer", sum, delta...)
	check(t, resp, res, 200, `"default";r=1;t=2`, api.RateLimit{Limit: 3, Remaining: 1, ResetMS: 2000})

	// A model whose backend is down says when to retry: 503 with Retry-After.
	resp, res = e.post(t, "/v1/models/sum/infer", `{"input":{"numbers":[1],"down":1500}}`, "X-Forwarded-For", "10.0.0.5")
	if resp.StatusCode != 503 || res.Error == nil || res.Error.Type != api.ModelUnavailable || res.Error.RetryAfterMS != 1500 || resp.Header.Get("Retry-After") != "2" {
		t.Errorf("backend down: %d Retry-After %q %+v", resp.StatusCode, resp.Header.Get("Retry-After"), res.Error)
	}

	if n := e.counter(t, "mqttinfer_throttled_total", map[string]string{"reason": "rate"}); n != 1 {
		t.Errorf("throttled counted %v times, want 1", n)
	}
	if n := e.counter(t, "mqttinfer_rejected_total", map[string]string{"reason": "rate_limited"}); n != 1 {
		t.Errorf("rate_limited rejections counted %v times, want 1", n)
	}
}

// TestOverloaded: with the queue full, a request is answered 503 overloaded
// and its client gets its tokens back.
func TestOverloaded(t *testing.T) {
	e := newEnv(t, envConfig{workers: 1, queue: 1, throttle: &throttle.Config{
		Default: throttle.Limits{Rate: 1, Burst: 5},
		Now:     fixedClock,
	}})
	// The only worker is busy with a stream that waits...
	busy := e.openStream(t, context.Background(), "/v1/models/words/infer", `{"input":{"text":"a b","wait":true}}`, "Accept", "text/event-stream", "X-Forwarded-For", "10.0.1.1")
	defer busy.Body.Close()
	rd := newSSEReader(busy.Body)
	if ev, err := rd.next(); err != nil || ev.Event != api.EventDelta {
		t.Fatalf("first event %+v: %v", ev, err)
	}
	// ...and the queue's one place is taken: a stream's headers come once
	// the pool has taken its request.
	queued := e.openStream(t, context.Background(), "/v1/models/words/infer", `{"input":{"text":"q"}}`, "Accept", "text/event-stream", "X-Forwarded-For", "10.0.1.2")
	defer queued.Body.Close()
	if queued.StatusCode != 200 || e.pool.QueueDepth() != 1 {
		t.Fatalf("queued stream: %d, queue depth %d", queued.StatusCode, e.pool.QueueDepth())
	}

	for range 2 {
		resp, res := e.post(t, "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, "X-Forwarded-For", "10.0.1.3")
		if resp.StatusCode != 503 || res.Error == nil || res.Error.Type != api.Overloaded {
			t.Fatalf("full queue: %d %+v", resp.StatusCode, res)
		}
		if rl := resp.Header.Get("RateLimit"); rl != `"default";r=5;t=0` || res.RateLimit.Remaining != 5 {
			t.Errorf("after a refund: RateLimit %q, body %+v", rl, res.RateLimit)
		}
	}
	if n := e.counter(t, "mqttinfer_rejected_total", map[string]string{"reason": "overloaded"}); n != 2 {
		t.Errorf("overloaded counted %v times, want 2", n)
	}

	close(e.words.release)
	for _, body := range []*sseReader{rd, newSSEReader(queued.Body)} {
		var last api.StreamEvent
		for {
			ev, err := body.next()
			if err != nil {
				t.Fatalf("stream ended without a final event: %v", err)
			}
			if last = streamEvent(t, ev); last.Event != api.EventDelta {
				break
			}
		}
		if last.Status != 200 {
			t.Errorf("final %+v", last)
		}
	}
}
