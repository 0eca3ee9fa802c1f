package devicesim

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Every goroutine of the simulator, paho and mochi must be gone when the
// tests end: the broker is closed in t.Cleanup and every client disconnects.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testBroker is an embedded mochi broker on 127.0.0.1 with a random port,
// open to everyone, with the inline client enabled.
type testBroker struct {
	srv   *mochi.Server
	addr  string // tcp://127.0.0.1:port, ssl://127.0.0.1:port, unix:///path
	close func()
}

func startBroker(t *testing.T) *testBroker {
	t.Helper()
	return startBrokerOn(t, "tcp", listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"}))
}

// startBrokerOn starts the test broker on l; its addr is scheme://l.Address().
func startBrokerOn(t *testing.T, scheme string, l listeners.Listener) *testBroker {
	t.Helper()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	closeOnce := sync.OnceFunc(func() { _ = srv.Close() })
	t.Cleanup(closeOnce)
	return &testBroker{srv: srv, addr: scheme + "://" + l.Address(), close: closeOnce}
}

// closedAddr is a broker address on which nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return "tcp://" + addr
}

// outcome is what the test responder did with a request.
type outcome string

const (
	outOK         outcome = "ok"
	outThrottled  outcome = "429"
	outOverloaded outcome = "overloaded"
	outDropped    outcome = "dropped"
	outInvalid    outcome = "invalid"
)

// respEvent is one request as the responder saw and handled it.
type respEvent struct {
	Device  string
	ID      string
	N       int // 1-based arrival index of this device's requests
	Outcome outcome
	RecvAt  time.Time
	ReplyAt time.Time
}

// responder answers requests on the broker's inline client with a real
// computation (the sample's value doubled), and misbehaves on a fixed
// schedule per device (by arrival index n):
//
//	n%20 == 0                   dropped (no reply: lost)
//	device == throttled, n%5==0 429 rate_limited, retry_after_ms = retryMS
//	n%11 == 0                   503 overloaded
type responder struct {
	srv       *mochi.Server
	prefix    string
	throttled string
	retryMS   int64

	mu     sync.Mutex
	counts map[string]int
	events []respEvent
	errs   []error
}

func startResponder(t *testing.T, b *testBroker, prefix, throttled string, retryMS int64) *responder {
	t.Helper()
	r := &responder{srv: b.srv, prefix: prefix, throttled: throttled, retryMS: retryMS, counts: map[string]int{}}
	if err := b.srv.Subscribe(topics.RequestFilter(prefix), 1, r.handle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.srv.Unsubscribe(topics.RequestFilter(prefix), 1) })
	return r
}

func (r *responder) handle(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
	recv := time.Now()
	tp, err := topics.Parse(r.prefix, pk.TopicName)
	if err != nil || tp.Kind != topics.KindRequest {
		return
	}
	req, aerr := api.DecodeRequest(pk.Payload)
	r.mu.Lock()
	r.counts[tp.Device]++
	n := r.counts[tp.Device]
	r.mu.Unlock()

	res := api.Result{ID: req.ID, Model: tp.Model, ModelVersion: "test", Status: api.StatusOK}
	out := outOK
	switch {
	case aerr != nil:
		out = outInvalid
		res = api.ErrorResult(req.ID, tp.Model, aerr)
	case n%20 == 0:
		out = outDropped
	case tp.Device == r.throttled && n%5 == 0:
		out = outThrottled
		e := api.Errorf(api.RateLimited, "device %s is over its test budget", tp.Device)
		e.RetryAfterMS = r.retryMS
		res = api.ErrorResult(req.ID, tp.Model, e)
	case n%11 == 0:
		out = outOverloaded
		res = api.ErrorResult(req.ID, tp.Model, api.Errorf(api.Overloaded, "test queue is full"))
	default:
		var s AnomalySample
		if err := json.Unmarshal(req.Input, &s); err != nil || s.Sensor == "" || math.IsNaN(s.Value) {
			out = outInvalid
			res = api.ErrorResult(req.ID, tp.Model, api.Errorf(api.InvalidInput, "want {sensor, value}: %v", err))
			break
		}
		res.Output, _ = json.Marshal(map[string]any{"sensor": s.Sensor, "doubled": 2 * s.Value})
		res.LatencyMS = float64(time.Since(recv)) / 1e6
	}
	res.RateLimit = &api.RateLimit{Limit: 10, Remaining: 10 - n%10, ResetMS: 100}
	ev := respEvent{Device: tp.Device, ID: req.ID, N: n, Outcome: out, RecvAt: recv}
	if out != outDropped {
		ev.ReplyAt = time.Now()
	}
	// Recorded before the reply goes out: the run may end as soon as the
	// last reply arrives.
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	if out != outDropped {
		body, _ := json.Marshal(res)
		if err := r.srv.Publish(tp.ResultTopic(), body, false, 1); err != nil {
			r.mu.Lock()
			r.errs = append(r.errs, fmt.Errorf("publish %s: %w", tp.ResultTopic(), err))
			r.mu.Unlock()
		}
	}
}

// snapshot returns what the responder saw, failing t if it could not reply.
func (r *responder) snapshot(t *testing.T) []respEvent {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, err := range r.errs {
		t.Errorf("test responder: %v", err)
	}
	return append([]respEvent(nil), r.events...)
}

// waitFor polls cond every 5 ms until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
