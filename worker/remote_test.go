package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// rtWait bounds every wait of these tests; generous, for a loaded machine.
const rtWait = 20 * time.Second

// rtSumModel is a small real model: it adds up {"values": [numbers]} and
// answers anything else with invalid input. It counts its calls; with gate
// set, each call announces itself on entered and waits for the gate.
type rtSumModel struct {
	calls   atomic.Int64
	entered chan struct{}
	gate    chan struct{}
}

func (m *rtSumModel) Info() inference.Info {
	return inference.Info{Name: "sum", Version: "1", Description: "adds numbers", Cost: 1}
}

func (m *rtSumModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	m.calls.Add(1)
	var in struct {
		Values []float64 `json:"values"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil {
		return nil, inference.InvalidInput("input: want {\"values\": [numbers]}: %v", err)
	}
	if len(in.Values) == 0 {
		return nil, inference.InvalidInput("input: \"values\" is empty")
	}
	if m.gate != nil {
		m.entered <- struct{}{}
		select {
		case <-m.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	sum := 0.0
	for _, v := range in.Values {
		sum += v
	}
	return map[string]float64{"sum": sum}, nil
}

func rtCore(t *testing.T, m inference.Model, reg prometheus.Registerer) *Core {
	t.Helper()
	models := &inference.Registry{}
	if err := models.Register(m); err != nil {
		t.Fatal(err)
	}
	c := &Core{Models: models}
	if reg != nil {
		c.Metrics = metrics.New(reg)
	}
	return c
}

// rtNoLeaks fails the test if goroutines started during it outlive it:
// paho's and the broker's included. Call it first, so it runs last.
func rtNoLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func rtBroker(t *testing.T, models func() []string, lim *throttle.Limiter) *broker.Broker {
	t.Helper()
	b, err := broker.New(broker.Options{TCPAddr: "127.0.0.1:0", Models: models, Throttle: lim})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// mochi v2.7.9's Server.Close can deadlock with a client still
		// disconnecting: Clients.GetByListener read-locks the client map
		// and read-locks it again (Len), and a client's Delete waiting in
		// between blocks both. The clients and workers of a test
		// disconnect in earlier cleanups; the broker deletes each at the
		// end of its connection's attachClient, which has no other outside
		// sign than its goroutine (no test here runs in parallel).
		pollUntil(t, "the clients to leave the broker", func() bool {
			return !rtGoroutineIn("mochi-mqtt/server/v2.(*Server).attachClient(")
		})
		b.Close()
	})
	return b
}

// rtGoroutineIn reports whether a goroutine runs the function fn (a
// fragment of its stack trace), as goleak finds them.
func rtGoroutineIn(fn string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Contains(string(buf[:n]), fn)
		}
		buf = make([]byte, 2*len(buf))
	}
}

// rtMosquitto starts a private Mosquitto on a free port and returns its URL.
func rtMosquitto(t *testing.T) string {
	t.Helper()
	const bin = "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("MQTTINFER_REQUIRE_TESTDATA") == "" {
			t.Skipf("%s not installed (apt-get install -y mosquitto); set MQTTINFER_REQUIRE_TESTDATA=1 to make this a failure", bin)
		}
		t.Fatalf("%s not installed: run apt-get install -y mosquitto (make test does)", bin)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	cfg := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n", port)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("mosquitto output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(rtWait)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return "tcp://" + addr
		}
		select {
		case <-exited:
			t.Fatalf("mosquitto exited at start-up: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not listen on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond) // polling the port: nothing to wait on
	}
}

func rtOptions(brokerURL, node string) RemoteOptions {
	return RemoteOptions{
		Broker:      brokerURL,
		ClientID:    "worker-" + node,
		Group:       "workers",
		Concurrency: 4,
		DedupTTL:    time.Minute,
		Node:        node,
		Version:     "test",
	}
}

// rtRun runs a Remote until stop (or the end of the test) and waits until
// it takes requests.
func rtRun(t *testing.T, core *Core, opts RemoteOptions) (r *Remote, stop func() error) {
	t.Helper()
	r, err := NewRemote(core, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(3 * rtWait):
				runErr = fmt.Errorf("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-r.Subscribed():
	case err := <-done:
		done <- err
		t.Fatalf("Run returned before subscribing: %v", err)
	case <-time.After(rtWait):
		t.Fatal("remote worker did not subscribe")
	}
	return r, stop
}

// rtClient is an MQTT client (a device, or an observer) collecting what it
// receives on its filters.
type rtClient struct {
	c    mqtt.Client
	msgs chan mqtt.Message
}

func rtConnect(t *testing.T, brokerURL, clientID string, filters ...string) *rtClient {
	t.Helper()
	cl := &rtClient{msgs: make(chan mqtt.Message, 1024)}
	o := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(clientID).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(rtWait)
	cl.c = mqtt.NewClient(o)
	if tok := cl.c.Connect(); !tok.WaitTimeout(rtWait) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { cl.c.Disconnect(250) })
	if len(filters) == 0 {
		return cl
	}
	// One SUBSCRIBE for all filters: mochi refuses a SUBSCRIBE whose packet
	// id equals one of its own messages in flight to the client (0x91),
	// which a second SUBSCRIBE can hit while retained messages arrive.
	want := map[string]byte{}
	for _, f := range filters {
		want[f] = 1
	}
	tok := cl.c.SubscribeMultiple(want, func(_ mqtt.Client, m mqtt.Message) { cl.msgs <- m })
	if !tok.WaitTimeout(rtWait) || tok.Error() != nil {
		t.Fatalf("subscribe %v: %v", filters, tok.Error())
	}
	for f, code := range tok.(*mqtt.SubscribeToken).Result() {
		if code >= 0x80 {
			t.Fatalf("subscribe %s refused: 0x%02x", f, code)
		}
	}
	return cl
}

func (cl *rtClient) publish(t *testing.T, topic string, payload []byte) {
	t.Helper()
	tok := cl.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(rtWait) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (cl *rtClient) next(t *testing.T) mqtt.Message {
	t.Helper()
	select {
	case m := <-cl.msgs:
		return m
	case <-time.After(rtWait):
		t.Fatal("no message received")
		return nil
	}
}

// reply waits for the next message and decodes it as a reply on topic.
func (cl *rtClient) reply(t *testing.T, topic string) (api.Result, []byte) {
	t.Helper()
	m := cl.next(t)
	if m.Topic() != topic {
		t.Fatalf("reply on %s, want %s (%s)", m.Topic(), topic, m.Payload())
	}
	var res api.Result
	if err := json.Unmarshal(m.Payload(), &res); err != nil {
		t.Fatalf("reply %s: %v", m.Payload(), err)
	}
	return res, m.Payload()
}

func rtRequest(id string, values ...any) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "input": map[string]any{"values": values}})
	return b
}

func TestRemoteEmbeddedBroker(t *testing.T) {
	rtNoLeaks(t)
	model := &rtSumModel{}
	core := rtCore(t, model, nil)
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	rtRun(t, core, rtOptions(url, "node-a"))

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	resTopic := topics.Result(prefix, "v1", dev, "sum")

	d.publish(t, topics.Request(prefix, "v1", dev, "sum"), rtRequest("a", 1, 2, 3.5))
	res, _ := d.reply(t, resTopic)
	if res.Status != 200 || res.ID != "a" || res.Model != "sum" || res.ModelVersion != "1" || string(res.Output) != `{"sum":6.5}` {
		t.Fatalf("result = %+v (output %s), want 200 with sum 6.5", res, res.Output)
	}

	d.publish(t, topics.Request(prefix, "v1", dev, "sum"), rtRequest("b", "x"))
	res, _ = d.reply(t, resTopic)
	if res.Status != 422 || res.ID != "b" || res.Error == nil || res.Error.Type != api.InvalidInput {
		t.Fatalf("bad input: reply = %+v, want 422 invalid_input", res)
	}

	// Without an id the worker makes one up and echoes it.
	d.publish(t, topics.Request(prefix, "v2", dev, "sum"), []byte(`{"input":{"values":[4]}}`))
	res, _ = d.reply(t, topics.Result(prefix, "v2", dev, "sum"))
	if res.Status != 200 || res.ID == "" || string(res.Output) != `{"sum":4}` {
		t.Fatalf("request without id: reply = %+v", res)
	}

	// The catalog and the online status are retained on every version.
	obs := rtConnect(t, url, "observer", topics.Models(prefix, "v1"), topics.StatusFilter(prefix))
	seen := map[string]string{}
	for range 1 + len(topics.Versions()) {
		m := obs.next(t)
		seen[m.Topic()] = string(m.Payload())
	}
	if cat := seen[topics.Models(prefix, "v1")]; !strings.Contains(cat, `"name":"sum"`) {
		t.Errorf("catalog = %q, want the sum model", cat)
	}
	for _, v := range topics.Versions() {
		var st Status
		if err := json.Unmarshal([]byte(seen[topics.Status(prefix, v, "node-a")]), &st); err != nil || st.State != "online" || st.Transport != "remote" || st.Version != "test" {
			t.Errorf("status on %s = %q (%v), want online", v, seen[topics.Status(prefix, v, "node-a")], err)
		}
	}
}

func TestRemoteGroupSplitsRequests(t *testing.T) {
	rtNoLeaks(t)
	modelA, modelB := &rtSumModel{}, &rtSumModel{}
	coreA, coreB := rtCore(t, modelA, nil), rtCore(t, modelB, nil)
	b := rtBroker(t, coreA.Models.Names, nil)
	url := "tcp://" + b.Addr()
	_, stopA := rtRun(t, coreA, rtOptions(url, "node-a"))
	_, stopB := rtRun(t, coreB, rtOptions(url, "node-b"))

	const dev, n = "dev-1", 40
	prefix := topics.DefaultPrefix
	marker := "mqttinfer-test/flush/" + dev // outside the prefix: plain broker traffic
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""), marker)
	for i := range n {
		d.publish(t, topics.Request(prefix, "v1", dev, "sum"), rtRequest(fmt.Sprint("r", i), i))
	}
	answers := map[string]int{}
	for range n {
		res, _ := d.reply(t, topics.Result(prefix, "v1", dev, "sum"))
		if res.Status != 200 {
			t.Fatalf("reply %+v, want 200", res)
		}
		answers[res.ID]++
	}

	// Stop both workers (every reply is then with the broker), wait until
	// the broker has read their DISCONNECTs (so it has routed every reply
	// before them), then send a marker after which no reply may come.
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, "the workers to leave the broker", func() bool { return b.Clients() == 1 })
	d.publish(t, marker, []byte("flush"))
	for m := d.next(t); m.Topic() != marker; m = d.next(t) {
		var res api.Result
		json.Unmarshal(m.Payload(), &res)
		answers[res.ID]++
	}
	for i := range n {
		if id := fmt.Sprint("r", i); answers[id] != 1 {
			t.Errorf("request %s answered %d times, want once", id, answers[id])
		}
	}
	// Selection among group members is random on mochi: with 40 requests
	// both workers get some, except with probability 2^-39.
	a, bb := modelA.calls.Load(), modelB.calls.Load()
	if a+bb != n || a == 0 || bb == 0 {
		t.Fatalf("worker A ran %d, worker B %d requests; want %d split between both", a, bb, n)
	}
}

func TestRemoteMosquittoThrottle(t *testing.T) {
	rtNoLeaks(t)
	url := rtMosquitto(t)
	// A frozen clock: the buckets do not refill during the test.
	frozen := time.Unix(1_700_000_000, 0)
	lim, err := throttle.New(throttle.Config{
		Default: throttle.Limits{Rate: 1, Burst: 2},
		Now:     func() time.Time { return frozen },
	})
	if err != nil {
		t.Fatal(err)
	}
	core := rtCore(t, &rtSumModel{}, nil)
	opts := rtOptions(url, "node-m")
	opts.Throttle = lim
	opts.MaxRequestSize = 200
	rtRun(t, core, opts)

	prefix := topics.DefaultPrefix
	d1 := rtConnect(t, url, "dev-1", topics.ResultFilter(prefix, "", "dev-1", ""))
	d2 := rtConnect(t, url, "dev-2", topics.ResultFilter(prefix, "", "dev-2", ""))
	req1, res1 := topics.Request(prefix, "v1", "dev-1", "sum"), topics.Result(prefix, "v1", "dev-1", "sum")

	for i, wantRemaining := range []int{1, 0} {
		d1.publish(t, req1, rtRequest(fmt.Sprint("ok", i), 1, 1))
		res, raw := d1.reply(t, res1)
		if res.Status != 200 || res.RateLimit == nil || res.RateLimit.Limit != 2 || res.RateLimit.Remaining != wantRemaining {
			t.Fatalf("request %d: reply %s, want 200 with ratelimit limit 2 remaining %d", i, raw, wantRemaining)
		}
	}
	d1.publish(t, req1, rtRequest("over", 1))
	res, raw := d1.reply(t, res1)
	if res.Status != 429 || res.ID != "over" || res.Error == nil || res.Error.Type != api.RateLimited ||
		res.Error.RetryAfterMS != 1000 || !strings.Contains(res.Error.Message, "dev-1") || res.RateLimit == nil {
		t.Fatalf("third request: reply %s, want 429 rate_limited retry_after_ms 1000 with ratelimit", raw)
	}
	// A refused request is retried under the same id once allowed, so it
	// is not remembered as answered: a copy is refused again, not replayed.
	d1.publish(t, req1, rtRequest("over", 1))
	if res, raw := d1.reply(t, res1); res.Status != 429 {
		t.Fatalf("retry: reply %s, want 429 again", raw)
	}

	// Another device has its own bucket.
	d2.publish(t, topics.Request(prefix, "v1", "dev-2", "sum"), rtRequest("x", 2))
	if res, raw := d2.reply(t, topics.Result(prefix, "v1", "dev-2", "sum")); res.Status != 200 || res.RateLimit == nil || res.RateLimit.Remaining != 1 {
		t.Fatalf("dev-2: reply %s, want 200 with 1 token left", raw)
	}

	// On a foreign broker the worker validates requests itself; every
	// reply carries the device's ratelimit.
	for _, tc := range []struct {
		name, version string
		payload       []byte
		status        int
		typ           api.ErrorType
	}{
		{"unsupported version", "v9", rtRequest("v", 1), 404, api.UnsupportedVersion},
		{"too large", "v1", []byte(`{"id":"big","input":{"values":[` + strings.Repeat("1,", 100) + `1]}}`), 413, api.PayloadTooLarge},
		{"not JSON", "v1", []byte(`{"id":"nj","input":`), 400, api.InvalidRequest},
		{"unknown model", "v1", rtRequest("um", 1), 404, api.ModelNotFound},
	} {
		model := "sum"
		if tc.typ == api.ModelNotFound {
			model = "nope"
		}
		d1.publish(t, topics.Request(prefix, tc.version, "dev-1", model), tc.payload)
		res, raw := d1.reply(t, topics.Result(prefix, tc.version, "dev-1", model))
		if res.Status != tc.status || res.Error == nil || res.Error.Type != tc.typ || res.RateLimit == nil || res.RateLimit.Remaining != 0 {
			t.Errorf("%s: reply %s, want %d %s with ratelimit (0 left)", tc.name, raw, tc.status, tc.typ)
		}
		if tc.typ == api.UnsupportedVersion && len(res.Error.Versions) != len(topics.Versions()) {
			t.Errorf("%s: versions %v, want %v", tc.name, res.Error.Versions, topics.Versions())
		}
		if tc.typ == api.PayloadTooLarge && res.ID != "big" {
			t.Errorf("%s: id %q, want big", tc.name, res.ID)
		}
	}
}

func TestRemoteDuplicateRunsOnce(t *testing.T) {
	rtNoLeaks(t)
	model := &rtSumModel{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	reg := prometheus.NewRegistry()
	core := rtCore(t, model, reg)
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	r, _ := rtRun(t, core, rtOptions(url, "node-a"))

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	req, resTopic := topics.Request(prefix, "v1", dev, "sum"), topics.Result(prefix, "v1", dev, "sum")

	// The first copy runs and blocks in the model; the second arrives
	// meanwhile and waits for it (in the lane of the device and model).
	d.publish(t, req, rtRequest("same", 2, 3))
	select {
	case <-model.entered:
	case <-time.After(rtWait):
		t.Fatal("model not called")
	}
	d.publish(t, req, rtRequest("same", 2, 3))
	pollUntil(t, "the copy to wait for the first", func() bool { return r.waiting.Load() == 1 })
	close(model.gate)
	_, first := d.reply(t, resTopic)
	_, second := d.reply(t, resTopic)
	// A later copy is answered from the cache.
	d.publish(t, req, rtRequest("same", 2, 3))
	_, third := d.reply(t, resTopic)

	if !bytes.Equal(first, second) || !bytes.Equal(first, third) {
		t.Fatalf("copies got different replies:\n%s\n%s\n%s", first, second, third)
	}
	if !strings.Contains(string(first), `"status":200`) || !strings.Contains(string(first), `"sum":5`) {
		t.Fatalf("reply %s, want 200 with sum 5", first)
	}
	if n := model.calls.Load(); n != 1 {
		t.Fatalf("model ran %d times for one request id, want 1", n)
	}
	if n := rtCounter(t, reg, "mqttinfer_duplicates_total"); n != 2 {
		t.Fatalf("duplicates_total = %v, want 2", n)
	}
}

func rtCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			sum := 0.0
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

// rtLogWatch is a slog handler that passes every message to a channel, so
// a test can wait for a step that has no other outside sign.
type rtLogWatch struct{ msgs chan string }

func (h rtLogWatch) Enabled(context.Context, slog.Level) bool { return true }
func (h rtLogWatch) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}
func (h rtLogWatch) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h rtLogWatch) WithGroup(string) slog.Handler      { return h }

func (h rtLogWatch) waitFor(t *testing.T, prefix string) {
	t.Helper()
	timeout := time.After(rtWait)
	for {
		select {
		case m := <-h.msgs:
			if strings.HasPrefix(m, prefix) {
				return
			}
		case <-timeout:
			t.Fatalf("no log message %q", prefix)
		}
	}
}

func TestRemoteGracefulShutdown(t *testing.T) {
	rtNoLeaks(t)
	model := &rtSumModel{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	reg := prometheus.NewRegistry()
	core := rtCore(t, model, reg)
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	logs := rtLogWatch{msgs: make(chan string, 1000)}
	opts := rtOptions(url, "node-a")
	opts.Log = slog.New(logs)
	_, stop := rtRun(t, core, opts)

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	resTopic := topics.Result(prefix, "v1", dev, "sum")
	// The observer sees the worker's publishes in the order it made them:
	// first its online status (retained), and at shutdown the reply to the
	// request in flight before the offline status.
	obs := rtConnect(t, url, "observer", topics.StatusFilter(prefix), topics.ResultFilter(prefix, "", "", ""))
	for range topics.Versions() {
		if m := obs.next(t); !strings.Contains(string(m.Payload()), `"state":"online"`) {
			t.Fatalf("status %s = %s, want online", m.Topic(), m.Payload())
		}
	}
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	d.publish(t, topics.Request(prefix, "v1", dev, "sum"), rtRequest("slow", 20, 22))
	select {
	case <-model.entered:
	case <-time.After(rtWait):
		t.Fatal("model not called")
	}

	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	logs.waitFor(t, "shutting down")
	close(model.gate)
	res, raw := d.reply(t, resTopic)
	if res.Status != 200 || res.ID != "slow" || string(res.Output) != `{"sum":42}` {
		t.Fatalf("in-flight request: reply %s, want 200 with sum 42", raw)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(3 * rtWait):
		t.Fatal("Run did not return")
	}

	if m := obs.next(t); m.Topic() != resTopic {
		t.Fatalf("after shutdown began, the worker first published %s on %s; want the reply to the request in flight", m.Payload(), m.Topic())
	}
	for range topics.Versions() {
		m := obs.next(t)
		if !strings.Contains(string(m.Payload()), `"state":"offline"`) {
			t.Fatalf("after the reply: %s on %s, want the offline status", m.Payload(), m.Topic())
		}
	}
	// The offline status is retained for whoever looks later.
	late := rtConnect(t, url, "late-observer", topics.StatusFilter(prefix))
	for range topics.Versions() {
		m := late.next(t)
		var st Status
		if err := json.Unmarshal(m.Payload(), &st); err != nil || st.State != "offline" || st.Node != "node-a" || !m.Retained() {
			t.Errorf("status on %s = %s (retained %v), want retained offline", m.Topic(), m.Payload(), m.Retained())
		}
	}
	if n := rtCounter(t, reg, "mqttinfer_requests_total"); n != 1 {
		t.Errorf("requests_total = %v, want 1", n)
	}
}

// With many requests in flight (unacknowledged) at shutdown, the worker
// still stops taking new ones: on mochi an UNSUBSCRIBE whose packet id is
// in use by a message in flight to the worker is silently ignored.
func TestRemoteShutdownStopsIntake(t *testing.T) {
	rtNoLeaks(t)
	const inFlight = 12
	model := &rtSumModel{entered: make(chan struct{}, inFlight), gate: make(chan struct{})}
	core := rtCore(t, model, nil)
	core.DefaultDeadline = time.Minute // the requests wait on the test, not on a clock
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	logs := rtLogWatch{msgs: make(chan string, 1000)}
	opts := rtOptions(url, "node-a")
	opts.Concurrency = 2
	opts.Log = slog.New(logs)
	r, stop := rtRun(t, core, opts)

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	req, resTopic := topics.Request(prefix, "v1", dev, "sum"), topics.Result(prefix, "v1", dev, "sum")
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	for i := range inFlight {
		d.publish(t, req, rtRequest(fmt.Sprint("r", i), i))
	}
	// All are unacknowledged: one runs, the others wait in the device's
	// lane (a device's requests for a model run one after the other).
	pollUntil(t, "every request to reach the worker", func() bool {
		return len(model.entered) == 1 && r.waiting.Load() == inFlight-1 && r.unacked.Load() == inFlight
	})

	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	logs.waitFor(t, "shutting down")
	// Intake has stopped: the broker has no worker left for a new request.
	d.publish(t, req, rtRequest("late", 1))
	res, raw := d.reply(t, resTopic)
	if res.ID != "late" || res.Status != 503 || res.Error == nil || res.Error.Type != api.ModelUnavailable {
		t.Fatalf("request after shutdown began: reply %s, want 503 model_unavailable from the broker", raw)
	}
	close(model.gate)
	got := map[string]bool{}
	for i := range inFlight {
		res, raw := d.reply(t, resTopic)
		if res.Status != 200 || res.ID != fmt.Sprint("r", i) {
			t.Fatalf("in-flight request: reply %s, want 200 to r%d", raw, i)
		}
		got[res.ID] = true
	}
	if len(got) != inFlight {
		t.Fatalf("answered %d distinct requests, want %d", len(got), inFlight)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// rtProxy forwards TCP connections to a broker and can cut them all, as a
// network failure would.
type rtProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func rtStartProxy(t *testing.T, target string) *rtProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &rtProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *rtProxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, down, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(down, up)
		go p.pipe(up, down)
	}
}

func (p *rtProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// cut closes every connection through the proxy; new ones are still accepted.
func (p *rtProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// A worker whose connection breaks leaves its will (offline, on the latest
// version's status topic), reconnects, announces itself again and
// subscribes again: with a clean session the broker forgot the subscription.
//
// This runs on Mosquitto: mochi v2.7.9 has a race when a client reconnects
// with the same client id before the broker has finished closing its old
// connection (the old connection's clean-up checks IsTakenOver, then
// deletes the client id from the client map and its subscriptions, which by
// then may be the new connection's), and paho's first reconnect attempt is
// immediate. About 1 run in 40 lost the worker's new session that way.
func TestRemoteReconnects(t *testing.T) {
	rtNoLeaks(t)
	core := rtCore(t, &rtSumModel{}, nil)
	url := rtMosquitto(t)
	proxy := rtStartProxy(t, strings.TrimPrefix(url, "tcp://"))
	logs := rtLogWatch{msgs: make(chan string, 1000)}
	opts := rtOptions("tcp://"+proxy.ln.Addr().String(), "node-a")
	opts.Log = slog.New(logs)
	rtRun(t, core, opts)
	logs.waitFor(t, "taking requests")

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	obs := rtConnect(t, url, "observer", topics.StatusFilter(prefix))
	for range topics.Versions() {
		if m := obs.next(t); !strings.Contains(string(m.Payload()), `"state":"online"`) {
			t.Fatalf("status %s = %s, want online", m.Topic(), m.Payload())
		}
	}
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	req, resTopic := topics.Request(prefix, "v1", dev, "sum"), topics.Result(prefix, "v1", dev, "sum")

	proxy.cut()
	// The broker publishes the will when it notices the broken connection;
	// the worker announces itself again once reconnected. Which comes first
	// is a race (mochi sends the will of a taken-over session from the old
	// connection's goroutine), so only the set is checked. A status may
	// come twice: paho v1.5.1's reconnect resumes its store (re-sending
	// with DUP what is in it) even with a clean session, concurrently with
	// the connect handler, whose announcements it may catch there; QoS 1 is
	// at least once.
	logs.waitFor(t, "taking requests")
	want := map[string]bool{topics.Status(prefix, topics.Latest(), "node-a") + " offline": true}
	for _, v := range topics.Versions() {
		want[topics.Status(prefix, v, "node-a")+" online"] = true
	}
	seen := map[string]bool{}
	for len(seen) < len(want) {
		m := obs.next(t)
		var st Status
		if err := json.Unmarshal(m.Payload(), &st); err != nil {
			t.Fatalf("status %s: %v", m.Payload(), err)
		}
		k := m.Topic() + " " + st.State
		if !want[k] {
			t.Fatalf("status message after the connection broke: %s, want only the will on the latest version and online on every version: %v", k, want)
		}
		seen[k] = true
	}
	d.publish(t, req, rtRequest("after", 1, 2))
	if res, raw := d.reply(t, resTopic); res.Status != 200 || res.ID != "after" {
		t.Fatalf("after reconnecting: reply %s, want 200", raw)
	}
}

func TestNewRemoteRejectsBadOptions(t *testing.T) {
	core := rtCore(t, &rtSumModel{}, nil)
	good := rtOptions("tcp://127.0.0.1:1883", "node-a")
	for _, tc := range []struct {
		name string
		edit func(*RemoteOptions)
		want string
	}{
		{"no broker", func(o *RemoteOptions) { o.Broker = "" }, "broker URL"},
		{"broker without scheme", func(o *RemoteOptions) { o.Broker = "localhost:1883" }, "broker URL"},
		{"group with slash", func(o *RemoteOptions) { o.Group = "a/b" }, "group"},
		{"no node", func(o *RemoteOptions) { o.Node = "" }, "node id"},
		{"bad prefix", func(o *RemoteOptions) { o.Prefix = "a/+" }, "prefix"},
		{"negative size", func(o *RemoteOptions) { o.MaxRequestSize = -1 }, "max request size"},
	} {
		opts := good
		tc.edit(&opts)
		if _, err := NewRemote(core, opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewRemote(core, good); err != nil {
		t.Fatalf("good options: %v", err)
	}
	if _, err := NewRemote(nil, good); err == nil {
		t.Fatal("nil core accepted")
	}
}

// rtWordsModel streams the words of {"text": "..."} one by one (the
// pattern of streamTestModel); with "wait" it stops after the first word
// until released or canceled. When its context ends (in that wait, or while
// an emit waits for the broker) it reports the cause on stopped. Its output
// is metered: a tenth of the cost per word.
type rtWordsModel struct {
	calls   atomic.Int64
	release chan struct{}
	stopped chan error
}

type rtWordsOut struct {
	Words int `json:"words"`
}

func (o rtWordsOut) Consumed() (any, float64) {
	return map[string]int{"words": o.Words}, float64(o.Words) / 10
}

func (m *rtWordsModel) Info() inference.Info {
	return inference.Info{Name: "words", Version: "1", Cost: 10, Streaming: true}
}

func (m *rtWordsModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	return m.InferStream(ctx, req, func(any) error { return nil })
}

func (m *rtWordsModel) InferStream(ctx context.Context, req inference.Request, emit func(any) error) (any, error) {
	m.calls.Add(1)
	var in struct {
		Text string `json:"text"`
		Wait bool   `json:"wait"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil || in.Text == "" {
		return nil, inference.InvalidInput("input.text: want a non-empty string")
	}
	defer func() {
		if ctx.Err() != nil {
			select {
			case m.stopped <- context.Cause(ctx):
			default:
			}
		}
	}()
	words := strings.Fields(in.Text)
	for i, w := range words {
		if err := emit(map[string]string{"word": w}); err != nil {
			return nil, err
		}
		if i == 0 && in.Wait {
			select {
			case <-m.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return rtWordsOut{Words: len(words)}, nil
}

func rtWordsRequest(id, text string, wait, stream bool) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "input": map[string]any{"text": text, "wait": wait}, "stream": stream})
	return b
}

// event waits for the next message and decodes it as a stream event on topic.
func (cl *rtClient) event(t *testing.T, topic string) (api.StreamEvent, []byte) {
	t.Helper()
	m := cl.next(t)
	if m.Topic() != topic {
		t.Fatalf("event on %s, want %s (%s)", m.Topic(), topic, m.Payload())
	}
	var ev api.StreamEvent
	if err := json.Unmarshal(m.Payload(), &ev); err != nil || ev.Event == "" {
		t.Fatalf("event %s: not a stream event (%v)", m.Payload(), err)
	}
	return ev, m.Payload()
}

func TestRemoteStreamsAndCancels(t *testing.T) {
	rtNoLeaks(t)
	model := &rtWordsModel{release: make(chan struct{}), stopped: make(chan error, 1)}
	core := rtCore(t, model, nil)
	core.DefaultDeadline = time.Minute // the requests wait on the test, not on a clock
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	rtRun(t, core, rtOptions(url, "node-a"))

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	req, resTopic := topics.Request(prefix, "v1", dev, "words"), topics.Result(prefix, "v1", dev, "words")

	// A stream: one delta per word in seq order, then exactly one done.
	words := []string{"one", "two", "three", "four"}
	d.publish(t, req, rtWordsRequest("s1", strings.Join(words, " "), false, true))
	for seq, w := range words {
		ev, raw := d.event(t, resTopic)
		if ev.Event != api.EventDelta || ev.Seq != seq || ev.ID != "s1" || ev.Model != "words" || string(ev.Delta) != `{"word":"`+w+`"}` {
			t.Fatalf("event %d: %s, want the delta of %q", seq, raw, w)
		}
	}
	done, doneRaw := d.event(t, resTopic)
	if done.Event != api.EventDone || done.Seq != len(words) || done.Status != 200 || string(done.Output) != `{"words":4}` || string(done.Usage) != `{"words":4}` {
		t.Fatalf("final event %s, want done with seq 4, 4 words", doneRaw)
	}

	// A copy of a finished stream gets its final event again, alone, and
	// the model does not run again; the lane keeps the replies in order.
	d.publish(t, req, rtWordsRequest("s1", strings.Join(words, " "), false, true))
	d.publish(t, req, rtWordsRequest("s2", "a b", false, false))
	if _, raw := d.event(t, resTopic); !bytes.Equal(raw, doneRaw) {
		t.Fatalf("copy of a finished stream got %s, want its final event %s", raw, doneRaw)
	}
	// Without "stream" the same model answers one result.
	if res, raw := d.reply(t, resTopic); res.Status != 200 || res.ID != "s2" || string(res.Output) != `{"words":2}` {
		t.Fatalf("request without stream: reply %s, want one result of 2 words", raw)
	}
	if n := model.calls.Load(); n != 2 {
		t.Fatalf("model ran %d times, want 2 (the copy is answered from the cache)", n)
	}

	// The device cancels a running stream: the model's context is
	// canceled by the device, and the stream ends with one 499 event.
	d.publish(t, req, rtWordsRequest("s3", "x y z", true, true))
	if ev, raw := d.event(t, resTopic); ev.Event != api.EventDelta || ev.Seq != 0 || ev.ID != "s3" {
		t.Fatalf("first event %s, want delta 0", raw)
	}
	// s4 queues behind s3 in the device's lane, and is canceled while s3
	// still runs (paho hands the worker the messages in order).
	d.publish(t, req, rtWordsRequest("s4", "never run", false, true))
	d.publish(t, req, []byte(`{"id":"s4","cancel":true}`))
	d.publish(t, req, []byte(`{"id":"s3","cancel":true}`))
	select {
	case cause := <-model.stopped:
		if !errors.Is(cause, errCanceledByDevice) {
			t.Fatalf("model stopped by %v, want the device's cancel", cause)
		}
	case <-time.After(rtWait):
		t.Fatal("the model's context was not canceled")
	}
	ev, raw := d.event(t, resTopic)
	if ev.Event != api.EventError || ev.Status != 499 || ev.Error == nil || ev.Error.Type != api.Canceled || ev.Seq != 1 || ev.ID != "s3" {
		t.Fatalf("after cancel: %s, want one error event 499 canceled with seq 1", raw)
	}
	// Canceled before its turn, s4 is answered 499 without running.
	ev, raw = d.event(t, resTopic)
	if ev.Event != api.EventError || ev.Status != 499 || ev.Seq != 0 || ev.ID != "s4" {
		t.Fatalf("queued request canceled: %s, want one error event 499 with seq 0", raw)
	}
	if n := model.calls.Load(); n != 3 {
		t.Fatalf("model ran %d times, want 3 (not for the request canceled in the queue)", n)
	}

	// An unknown id gets no reply (another worker of a group may run it).
	d.publish(t, req, []byte(`{"id":"nope","cancel":true}`))
	d.publish(t, req, rtWordsRequest("s5", "last", false, false))
	if res, raw := d.reply(t, resTopic); res.ID != "s5" || res.Status != 200 {
		t.Fatalf("after the cancel of an unknown id: %s, want the reply to s5 and nothing for the cancel", raw)
	}
}

// TestRemoteKeepsEachDevicesOrder: paho hands the worker messages
// concurrently, yet each device's requests for a model run in the order the
// device sent them (stateful models depend on it).
func TestRemoteKeepsEachDevicesOrder(t *testing.T) {
	rtNoLeaks(t)
	m := &orderModel{seen: map[string][]int{}}
	core := rtCore(t, m, nil)
	core.DefaultDeadline = time.Minute
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	opts := rtOptions(url, "node-a")
	opts.Concurrency = 4
	rtRun(t, core, opts)

	const n = 50
	prefix := topics.DefaultPrefix
	devices := []string{"dev-a", "dev-b"}
	clients := map[string]*rtClient{}
	for _, dev := range devices {
		clients[dev] = rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	}
	for i := range n {
		for _, dev := range devices {
			clients[dev].publish(t, topics.Request(prefix, "v1", dev, "order"), []byte(fmt.Sprintf(`{"id":"r%d","input":%d}`, i, i)))
		}
	}
	for _, dev := range devices {
		for i := range n {
			// Replies come in order too: one lane answers them one by one.
			res, raw := clients[dev].reply(t, topics.Result(prefix, "v1", dev, "order"))
			if res.Status != 200 || res.ID != fmt.Sprint("r", i) {
				t.Fatalf("%s: reply %d is %s, want 200 to r%d", dev, i, raw, i)
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, dev := range devices {
		if got := m.seen[dev]; len(got) != n || !slices.IsSorted(got) {
			t.Fatalf("device %s: the model saw %v, want 0..%d in order", dev, got, n-1)
		}
	}
}

// Different devices run at once; a device's second request for a model
// waits for its first, though a slot is free.
func TestRemoteLanesRunDevicesConcurrently(t *testing.T) {
	rtNoLeaks(t)
	model := &rtSumModel{entered: make(chan struct{}, 3), gate: make(chan struct{})}
	core := rtCore(t, model, nil)
	core.DefaultDeadline = time.Minute
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	r, _ := rtRun(t, core, rtOptions(url, "node-a"))

	prefix := topics.DefaultPrefix
	d1 := rtConnect(t, url, "dev-1", topics.ResultFilter(prefix, "", "dev-1", ""))
	d2 := rtConnect(t, url, "dev-2", topics.ResultFilter(prefix, "", "dev-2", ""))
	entered := func() {
		t.Helper()
		select {
		case <-model.entered:
		case <-time.After(rtWait):
			t.Fatal("model not called")
		}
	}
	d1.publish(t, topics.Request(prefix, "v1", "dev-1", "sum"), rtRequest("a", 1))
	entered()
	d2.publish(t, topics.Request(prefix, "v1", "dev-2", "sum"), rtRequest("b", 2))
	entered() // dev-2 runs while dev-1's request still does
	d1.publish(t, topics.Request(prefix, "v1", "dev-1", "sum"), rtRequest("c", 3))
	pollUntil(t, "dev-1's second request to queue", func() bool { return r.waiting.Load() == 1 })
	if n := model.calls.Load(); n != 2 {
		t.Fatalf("model called %d times, want 2: dev-1's second request must wait for its first", n)
	}
	close(model.gate)
	for _, want := range []string{"a", "c"} {
		if res, raw := d1.reply(t, topics.Result(prefix, "v1", "dev-1", "sum")); res.ID != want || res.Status != 200 {
			t.Fatalf("dev-1: reply %s, want 200 to %s", raw, want)
		}
	}
	if res, raw := d2.reply(t, topics.Result(prefix, "v1", "dev-2", "sum")); res.ID != "b" || res.Status != 200 {
		t.Fatalf("dev-2: reply %s, want 200 to b", raw)
	}
}

// The worker's own throttle charges a v2 batch per input, refuses a batch
// larger than the bucket with 413, and gives a metered output's unused
// tokens back. On Mosquitto, so the worker decodes requests itself: v1
// rejects a batch.
func TestRemoteBatchesAndSettles(t *testing.T) {
	rtNoLeaks(t)
	url := rtMosquitto(t)
	frozen := time.Unix(1_700_000_000, 0) // the bucket does not refill
	lim, err := throttle.New(throttle.Config{
		Default: throttle.Limits{Rate: 1, Burst: 20},
		Costs:   map[string]int{"words": 10},
		Now:     func() time.Time { return frozen },
	})
	if err != nil {
		t.Fatal(err)
	}
	models := &inference.Registry{}
	for _, m := range []inference.Model{&rtSumModel{}, &rtWordsModel{}} {
		if err := models.Register(m); err != nil {
			t.Fatal(err)
		}
	}
	opts := rtOptions(url, "node-m")
	opts.Throttle = lim
	rtRun(t, &Core{Models: models}, opts)

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	batch := func(n int) []byte {
		in := make([]any, n)
		for i := range in {
			in[i] = map[string]any{"values": []any{i, 1}}
		}
		in[1] = map[string]any{"values": "x"}
		b, _ := json.Marshal(map[string]any{"id": fmt.Sprint("batch", n), "inputs": in})
		return b
	}

	d.publish(t, topics.Request(prefix, "v1", dev, "sum"), batch(3))
	res, raw := d.reply(t, topics.Result(prefix, "v1", dev, "sum"))
	if res.Status != 400 || res.Error == nil || res.Error.Type != api.InvalidRequest || !strings.Contains(res.Error.Message, "inputs") {
		t.Fatalf("v1 batch: reply %s, want 400 naming the v2 field", raw)
	}

	v2sum, v2res := topics.Request(prefix, "v2", dev, "sum"), topics.Result(prefix, "v2", dev, "sum")
	d.publish(t, v2sum, batch(3))
	res, raw = d.reply(t, v2res)
	if res.Status != 200 || res.ID != "batch3" || len(res.Outputs) != 3 || res.RateLimit == nil || res.RateLimit.Remaining != 17 {
		t.Fatalf("v2 batch of 3: reply %s, want 200 with 3 outputs, charged 3 of 20 tokens", raw)
	}
	for i, want := range []string{`{"sum":1}`, "", `{"sum":3}`} {
		item := res.Outputs[i]
		if want == "" {
			if item.Status != 422 || item.Error == nil || item.Error.Type != api.InvalidInput {
				t.Errorf("batch item %d: %+v, want 422 invalid_input", i, item)
			}
		} else if item.Status != 200 || string(item.Output) != want {
			t.Errorf("batch item %d: %+v (%s), want 200 %s", i, item, item.Output, want)
		}
	}
	d.publish(t, v2sum, batch(21))
	res, raw = d.reply(t, v2res)
	if res.Status != 413 || res.Error == nil || res.Error.Type != api.PayloadTooLarge || !strings.Contains(res.Error.Message, "split it") || res.ID != "batch21" {
		t.Fatalf("v2 batch of 21: reply %s, want 413 payload_too_large (split it)", raw)
	}

	// words costs 10 up front and uses a tenth per word: a stream of 3
	// words leaves 17-10 = 7 at admission and gives 7 back (14); a result
	// of 2 words leaves 4 and gives 8 back (12). Without settlement the
	// second request would be refused.
	words, wordsRes := topics.Request(prefix, "v1", dev, "words"), topics.Result(prefix, "v1", dev, "words")
	d.publish(t, words, rtWordsRequest("w1", "one two three", false, true))
	for range 3 {
		if ev, raw := d.event(t, wordsRes); ev.Event != api.EventDelta {
			t.Fatalf("stream: %s, want a delta", raw)
		}
	}
	ev, raw := d.event(t, wordsRes)
	if ev.Event != api.EventDone || string(ev.Usage) != `{"words":3}` || ev.RateLimit == nil || ev.RateLimit.Remaining != 7 {
		t.Fatalf("stream: final %s, want done with 3 words and 7 tokens left", raw)
	}
	d.publish(t, words, rtWordsRequest("w2", "a b", false, false))
	res, w2 := d.reply(t, wordsRes)
	if res.Status != 200 || res.RateLimit == nil || res.RateLimit.Remaining != 4 {
		t.Fatalf("after settling the stream: reply %s, want 200 with 14-10 = 4 tokens left", w2)
	}
	// A copy is charged at intake like any request, then refunded when it
	// turns out to be answered from the cache.
	d.publish(t, words, rtWordsRequest("w2", "a b", false, false))
	if _, raw := d.reply(t, wordsRes); !bytes.Equal(raw, w2) {
		t.Fatalf("copy of w2: reply %s, want the cached %s", raw, w2)
	}
	d.publish(t, topics.Request(prefix, "v1", dev, "sum"), rtRequest("s", 1))
	if res, raw := d.reply(t, topics.Result(prefix, "v1", dev, "sum")); res.Status != 200 || res.RateLimit == nil || res.RateLimit.Remaining != 11 {
		t.Fatalf("after settling the result: reply %s, want 200 with 12-1 = 11 tokens left", raw)
	}
}

// The worker's throttle refuses a request at intake, at once, even while
// the device's previous request for the model still runs.
func TestRemoteThrottleRefusesAtIntake(t *testing.T) {
	rtNoLeaks(t)
	frozen := time.Unix(1_700_000_000, 0)
	lim, err := throttle.New(throttle.Config{
		Default: throttle.Limits{Rate: 1, Burst: 1},
		Now:     func() time.Time { return frozen },
	})
	if err != nil {
		t.Fatal(err)
	}
	model := &rtSumModel{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	core := rtCore(t, model, nil)
	core.DefaultDeadline = time.Minute
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	opts := rtOptions(url, "node-a")
	opts.Throttle = lim
	rtRun(t, core, opts)

	const dev = "dev-1"
	prefix := topics.DefaultPrefix
	d := rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	req, resTopic := topics.Request(prefix, "v1", dev, "sum"), topics.Result(prefix, "v1", dev, "sum")
	d.publish(t, req, rtRequest("a", 1))
	select {
	case <-model.entered:
	case <-time.After(rtWait):
		t.Fatal("model not called")
	}
	d.publish(t, req, rtRequest("b", 2))
	if res, raw := d.reply(t, resTopic); res.ID != "b" || res.Status != 429 || res.RateLimit == nil || res.RateLimit.Remaining != 0 {
		t.Fatalf("second request while the first runs: reply %s, want 429 at once", raw)
	}
	close(model.gate)
	if res, raw := d.reply(t, resTopic); res.ID != "a" || res.Status != 200 {
		t.Fatalf("first request: reply %s, want 200", raw)
	}
}

// TestRemoteShedsLoadPastItsQueue: with its queue full, the worker answers
// new requests 503 overloaded at once instead of letting them wait out
// their deadlines; the queued ones are still answered.
func TestRemoteShedsLoadPastItsQueue(t *testing.T) {
	rtNoLeaks(t)
	model := &rtSumModel{entered: make(chan struct{}, 8), gate: make(chan struct{})}
	core := rtCore(t, model, nil)
	b := rtBroker(t, core.Models.Names, nil)
	url := "tcp://" + b.Addr()
	opts := rtOptions(url, "node-q")
	opts.Concurrency, opts.QueueSize = 1, 1
	rtRun(t, core, opts)

	prefix := topics.DefaultPrefix
	devs := []string{"q-1", "q-2", "q-3", "q-4"}
	cl := map[string]*rtClient{}
	for _, dev := range devs {
		cl[dev] = rtConnect(t, url, dev, topics.ResultFilter(prefix, "", dev, ""))
	}
	// q-1 runs (and holds the one slot), q-2 waits: the queue holds 1.
	cl["q-1"].publish(t, topics.Request(prefix, "v1", "q-1", "sum"), rtRequest("r1", 1))
	<-model.entered
	cl["q-2"].publish(t, topics.Request(prefix, "v1", "q-2", "sum"), rtRequest("r2", 2))
	// q-3 and q-4 find the queue full.
	for _, dev := range devs[2:] {
		cl[dev].publish(t, topics.Request(prefix, "v1", dev, "sum"), rtRequest("r", 3))
		res, _ := cl[dev].reply(t, topics.Result(prefix, "v1", dev, "sum"))
		if res.Status != 503 || res.Error == nil || res.Error.Type != api.Overloaded {
			t.Errorf("%s: %+v, want 503 overloaded", dev, res)
		}
	}
	close(model.gate)
	for _, dev := range devs[:2] {
		if res, _ := cl[dev].reply(t, topics.Result(prefix, "v1", dev, "sum")); res.Status != 200 {
			t.Errorf("%s: %+v, want 200", dev, res)
		}
	}
}
