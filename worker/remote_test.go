package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// rtWait bounds every wait of these tests: a safety net on a loaded
// machine, not a timing assertion.
const rtWait = 20 * time.Second

const rtPrefix = "mqttinfer"

// countModel is a stateful model, like anomaly: it counts each device's
// requests and answers the count, and forgets devices when told to. With
// gate set, each call announces itself on entered and waits for the gate.
type countModel struct {
	mu      sync.Mutex
	counts  map[string]int
	entered chan string
	gate    chan struct{}
}

func newCountModel() *countModel { return &countModel{counts: map[string]int{}} }

func (m *countModel) Info() inference.Info {
	return inference.Info{Name: "count", Version: "1", Description: "counts a device's requests", Cost: 1}
}

func (m *countModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	var in struct {
		Bad bool `json:"bad"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil || in.Bad {
		return nil, inference.InvalidInput("input: want {} (%v)", err)
	}
	if m.gate != nil {
		m.entered <- req.Device
		select {
		case <-m.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counts[req.Device]++
	return map[string]int{"n": m.counts[req.Device]}, nil
}

func (m *countModel) Forget(match func(string) bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for d := range m.counts {
		if match(d) {
			delete(m.counts, d)
			n++
		}
	}
	return n
}

func rtCore(t *testing.T, reg prometheus.Registerer, models ...inference.Model) *Core {
	t.Helper()
	r := &inference.Registry{}
	for _, m := range models {
		if err := r.Register(m); err != nil {
			t.Fatal(err)
		}
	}
	c := &Core{Models: r, DefaultDeadline: rtWait}
	if reg != nil {
		c.Metrics = metrics.New(reg)
	}
	return c
}

// rtBroker starts mqttinfer's own broker without in-process workers, as
// `serve --in-process=false` runs it, and returns its URL.
func rtBroker(t *testing.T, lim *throttle.Limiter) string {
	t.Helper()
	b, err := broker.New(broker.Options{TCPAddr: "127.0.0.1:0", Throttle: lim})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return "tcp://" + b.Addr()
}

// rtWorker is a Remote running in the test.
type rtWorker struct {
	*Remote
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func rtRun(t *testing.T, url, node string, core *Core, tweak ...func(*RemoteOptions)) *rtWorker {
	t.Helper()
	o := RemoteOptions{Broker: url, Group: "g", Node: node, Version: "test", Concurrency: 4, DedupTTL: time.Minute, Heartbeat: time.Second}
	for _, f := range tweak {
		f(&o)
	}
	r, err := NewRemote(core, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &rtWorker{Remote: r, cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- r.Run(ctx) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

// stop leaves the group gracefully and waits for Run.
func (w *rtWorker) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	if err := w.wait(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// wait waits for Run to return and returns its error.
func (w *rtWorker) wait() error {
	w.once.Do(func() {
		select {
		case w.err = <-w.done:
		case <-time.After(rtWait):
			buf := make([]byte, 1<<20)
			w.err = fmt.Errorf("Run did not return; goroutines:\n%s", buf[:runtime.Stack(buf, true)])
		}
	})
	return w.err
}

// settled waits until every worker sees every partition owned.
func settled(t *testing.T, ws ...*rtWorker) {
	t.Helper()
	checkFor(t, func() error {
		for _, w := range ws {
			if err := w.Ready(context.Background()); err != nil {
				return fmt.Errorf("%s: %w", w.opts.Node, err)
			}
		}
		return nil
	})
}

// checkFor polls cond until it returns nil, failing the test after rtWait.
func checkFor(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(rtWait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition of other processes' making
	}
}

// rtDevice is an MQTT client (v5 unless told otherwise) subscribed to its
// own results and to extra filters.
type rtDevice struct {
	*mqttclient.Conn
	id   string
	msgs chan mqttclient.Message
}

func rtConnect(t *testing.T, url, id string, v mqttclient.Version, filters ...string) *rtDevice {
	t.Helper()
	d := &rtDevice{id: id, msgs: make(chan mqttclient.Message, 4096)}
	c, err := mqttclient.Dial(context.Background(), mqttclient.Options{URL: url, ClientID: id, Version: v,
		OnMessage: func(m mqttclient.Message) { d.msgs <- m }})
	if err != nil {
		t.Fatal(err)
	}
	d.Conn = c
	t.Cleanup(func() { c.Close() })
	filters = append(filters, topics.ResultFilter(rtPrefix, "", id, ""))
	var subs []mqttclient.Subscription
	for _, f := range filters {
		subs = append(subs, mqttclient.Subscription{Filter: f, QoS: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), rtWait)
	defer cancel()
	if err := c.Subscribe(ctx, subs...); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *rtDevice) send(t *testing.T, model string, body any, props ...mqttclient.Properties) {
	t.Helper()
	d.sendOn(t, topics.Request(rtPrefix, "v1", d.id, model), body, props...)
}

func (d *rtDevice) sendOn(t *testing.T, topic string, body any, props ...mqttclient.Properties) {
	t.Helper()
	b, ok := body.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	m := mqttclient.Message{Topic: topic, Payload: b, QoS: 1}
	if len(props) > 0 {
		m.Properties = props[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), rtWait)
	defer cancel()
	if err := d.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
}

func (d *rtDevice) next(t *testing.T) mqttclient.Message {
	t.Helper()
	select {
	case m := <-d.msgs:
		return m
	case <-time.After(rtWait):
		t.Fatalf("%s: no message", d.id)
		return mqttclient.Message{}
	}
}

func (d *rtDevice) result(t *testing.T) api.Result {
	t.Helper()
	m := d.next(t)
	var r api.Result
	if err := json.Unmarshal(m.Payload, &r); err != nil {
		t.Fatalf("%s on %s: %v", m.Payload, m.Topic, err)
	}
	return r
}

// quiet checks that nothing more arrives for a device: a marker request
// makes the round trip through the same worker, and nothing may come
// before its answer.
func (d *rtDevice) quiet(t *testing.T, model string) {
	t.Helper()
	d.send(t, model, map[string]any{"id": "quiet-marker", "input": map[string]any{}})
	if r := d.result(t); r.ID != "quiet-marker" {
		t.Fatalf("%s: extra reply %+v before the marker's", d.id, r)
	}
}

func req(id string) map[string]any { return map[string]any{"id": id, "input": map[string]any{}} }

func n(t *testing.T, r api.Result) int {
	t.Helper()
	var out struct{ N int }
	if r.Status != 200 || json.Unmarshal(r.Output, &out) != nil {
		t.Fatalf("result %+v", r)
	}
	return out.N
}

// TestRemoteAnswers: one worker on mqttinfer's broker answers the
// contract's replies, and publishes its catalog and status.
func TestRemoteAnswers(t *testing.T) {
	url := rtBroker(t, nil)
	obs := rtConnect(t, url, "observer", mqttclient.V5, topics.Models(rtPrefix, "v1"), topics.Status(rtPrefix, topics.Latest(), "node-a"))
	w := rtRun(t, url, "node-a", rtCore(t, nil, newCountModel()))
	settled(t, w)
	d := rtConnect(t, url, "dev-1", mqttclient.V5)
	d.send(t, "count", req("r1"))
	if r := d.result(t); r.ID != "r1" || n(t, r) != 1 || r.Model != "count" {
		t.Errorf("%+v", r)
	}
	for _, c := range []struct {
		topic  string
		body   any
		status int
	}{
		{topics.Request(rtPrefix, "v1", "dev-1", "count"), []byte(`{"id":"bad",`), 400},
		{topics.Request(rtPrefix, "v1", "dev-1", "count"), map[string]any{"id": "422", "input": map[string]any{"bad": true}}, 422},
		{topics.Request(rtPrefix, "v1", "dev-1", "nope"), req("404"), 404},
		{topics.Request(rtPrefix, "v9", "dev-1", "count"), req("v9"), 404},
	} {
		d.sendOn(t, c.topic, c.body)
		if r := d.result(t); r.Status != c.status || r.Error == nil {
			t.Errorf("%s: %+v, want %d", c.body, r, c.status)
		}
	}
	// Catalog and status are retained; the status shows the partitions.
	seen := map[string][]byte{}
	var st Status
	for st.Partitions == nil || st.Partitions.Serving != Partitions || len(seen) < 2 {
		m := obs.next(t)
		seen[m.Topic] = m.Payload
		if m.Topic == topics.Status(rtPrefix, topics.Latest(), "node-a") {
			if err := json.Unmarshal(m.Payload, &st); err != nil {
				t.Fatal(err)
			}
		}
	}
	if st.State != "online" || st.Transport != "remote" || st.Group != "g" {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(string(seen[topics.Models(rtPrefix, "v1")]), `"count"`) {
		t.Errorf("catalog %s", seen[topics.Models(rtPrefix, "v1")])
	}
}

// TestRemoteAffinity: with three workers on a broker that is not ours,
// each device's requests are all served by one worker: its count goes up
// one by one, in order.
func TestRemoteAffinity(t *testing.T) {
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{Config: "max_queued_messages 0\n"})
	var ws []*rtWorker
	for _, node := range []string{"w1", "w2", "w3"} {
		ws = append(ws, rtRun(t, m.URL(), node, rtCore(t, nil, newCountModel())))
	}
	settled(t, ws...)
	served := map[string]int{}
	for _, w := range ws {
		served[w.opts.Node] = w.Serving()
	}
	var devs []*rtDevice
	for i := range 12 {
		devs = append(devs, rtConnect(t, m.URL(), fmt.Sprintf("aff-%d", i), mqttclient.V311))
	}
	const each = 15
	for i := range each {
		for _, d := range devs {
			d.send(t, "count", req(fmt.Sprint(i)))
		}
	}
	for _, d := range devs {
		for i := range each {
			if r := d.result(t); r.ID != fmt.Sprint(i) || n(t, r) != i+1 {
				t.Fatalf("%s: reply %d: %+v (count %d)", d.id, i, r, n(t, r))
			}
		}
	}
	t.Logf("partitions served: %v", served)
}

// proxy forwards one worker's connection until cut: a crash, as the
// broker sees it.
type proxy struct {
	addr string
	ln   net.Listener
	mu   sync.Mutex
	cs   []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: "tcp://" + ln.Addr().String(), ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", strings.TrimPrefix(target, "tcp://"))
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.cs = append(p.cs, c, up)
			p.mu.Unlock()
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	t.Cleanup(p.cut)
	return p
}

func pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// cut breaks the connections and refuses new ones.
func (p *proxy) cut() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cs {
		c.Close()
	}
}

// TestRemoteTakesOverACrashedWorkersRequests: the request a worker was
// running when it crashed is run by the worker that takes its partition
// over, and answered once; a stream it had begun ends with a 503 event
// that follows its deltas.
func TestRemoteTakesOverACrashedWorkersRequests(t *testing.T) {
	url := rtBroker(t, nil)
	slow := newCountModel()
	slow.gate, slow.entered = make(chan struct{}), make(chan string, 16)
	words := &streamTestModel{release: make(chan struct{})}
	p := newProxy(t, url)
	a := rtRun(t, p.addr, "a", rtCore(t, nil, slow, words))
	settled(t, a)
	b := rtRun(t, url, "b", rtCore(t, nil, newCountModel(), &streamTestModel{}))
	settled(t, a, b)
	// A device of a's.
	var dev string
	for i := 0; ; i++ {
		dev = fmt.Sprintf("dev-%d", i)
		if a.Serves(dev) {
			break
		}
	}
	d := rtConnect(t, url, dev, mqttclient.V5)
	d.send(t, "count", req("held"))
	<-slow.entered // a runs it, and hangs there
	d.send(t, "words", map[string]any{"id": "s", "stream": true, "input": map[string]any{"text": "one two three", "wait": true}})
	var ev api.StreamEvent
	if err := json.Unmarshal(d.next(t).Payload, &ev); err != nil || ev.Event != api.EventDelta || ev.Seq != 0 {
		t.Fatalf("first delta %+v %v", ev, err)
	}
	p.cut() // a crashes: its will tells b
	got := map[string]int{}
	for range 2 {
		m := d.next(t)
		h, _ := api.PeekReply(m.Payload, "")
		got[h.ID] = h.Status
		if h.ID == "s" {
			if json.Unmarshal(m.Payload, &ev); ev.Event != api.EventError || ev.Seq != 1 || ev.Status != 503 {
				t.Errorf("cut stream: %s", m.Payload)
			}
		}
	}
	if got["held"] != 200 || got["s"] != 503 {
		t.Fatalf("after the crash: %v", got)
	}
	close(slow.gate)
	d.quiet(t, "count")
}

// TestRemoteFailoverUnderLoad: devices keep sending while one of three
// workers crashes; every request is answered exactly once.
func TestRemoteFailoverUnderLoad(t *testing.T) {
	url := rtBroker(t, nil)
	p := newProxy(t, url)
	ws := []*rtWorker{rtRun(t, p.addr, "w1", rtCore(t, nil, newCountModel()))}
	for _, node := range []string{"w2", "w3"} {
		ws = append(ws, rtRun(t, url, node, rtCore(t, nil, newCountModel())))
	}
	settled(t, ws...)
	var devs []*rtDevice
	for i := range 10 {
		devs = append(devs, rtConnect(t, url, fmt.Sprintf("fo-%d", i), mqttclient.V5))
	}
	const rounds = 30
	for i := range rounds {
		if i == rounds/3 {
			p.cut()
		}
		for _, d := range devs {
			d.send(t, "count", req(fmt.Sprint(i)))
		}
	}
	for _, d := range devs {
		seen := map[string]bool{}
		for range rounds {
			r := d.result(t)
			if r.Status != 200 || seen[r.ID] {
				t.Fatalf("%s: %+v (seen before: %v)", d.id, r, seen[r.ID])
			}
			seen[r.ID] = true
		}
		d.quiet(t, "count")
	}
}

// TestRemoteLeavesGracefully: a worker that leaves finishes what it runs,
// and its devices move to the others without a request lost or answered
// twice, MQTT 5 request/response included.
func TestRemoteLeavesGracefully(t *testing.T) {
	url := rtBroker(t, nil)
	slow := newCountModel()
	slow.gate, slow.entered = make(chan struct{}), make(chan string, 64)
	a := rtRun(t, url, "a", rtCore(t, nil, slow))
	b := rtRun(t, url, "b", rtCore(t, nil, newCountModel()))
	settled(t, a, b)
	var d *rtDevice
	for i := 0; ; i++ {
		if id := fmt.Sprintf("leave-%d", i); a.Serves(id) {
			d = rtConnect(t, url, id, mqttclient.V5, "rr/replies")
			break
		}
	}
	rr := mqttclient.Properties{ResponseTopic: "rr/replies", CorrelationData: []byte("c1")}
	d.send(t, "count", req("before"), rr)
	<-slow.entered
	go a.cancel() // leave: a finishes "before" first
	checkFor(t, func() error {
		if a.Ready(context.Background()) != nil {
			return nil
		}
		return errors.New("a has not begun to leave")
	})
	d.send(t, "count", req("during"))
	close(slow.gate)
	got := map[string]string{}
	for range 2 {
		m := d.next(t)
		h, _ := api.PeekReply(m.Payload, "")
		got[h.ID] = m.Topic
	}
	if got["before"] != "rr/replies" || got["during"] != topics.Result(rtPrefix, "v1", d.id, "count") {
		t.Fatalf("replies %v", got)
	}
	if err := a.wait(); err != nil {
		t.Fatal(err)
	}
	d.quiet(t, "count")
	if err := b.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestRemoteMQTT5: the response topic, the correlation data, the status
// user property and CBOR work through a worker on any broker.
func TestRemoteMQTT5(t *testing.T) {
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{})
	w := rtRun(t, m.URL(), "w", rtCore(t, nil, newCountModel()))
	settled(t, w)
	d := rtConnect(t, m.URL(), "v5-dev", mqttclient.V5, "app/v5-dev/replies")
	d.send(t, "count", req("rr"), mqttclient.Properties{ResponseTopic: "app/v5-dev/replies", CorrelationData: []byte{7}})
	got := d.next(t)
	if got.Topic != "app/v5-dev/replies" || string(got.Properties.CorrelationData) != "\x07" || got.Properties.UserValue("status") != "200" {
		t.Errorf("reply %+v", got)
	}
	body, err := api.MarshalCBOR(map[string]any{"id": "cb", "input": map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	d.sendOn(t, topics.Request(rtPrefix, "v2", d.id, "count"), body, mqttclient.Properties{ContentType: api.ContentTypeCBOR})
	got = d.next(t)
	if h, ok := api.PeekReply(got.Payload, api.ContentTypeCBOR); !ok || h.ID != "cb" || h.Status != 200 || got.Properties.ContentType != api.ContentTypeCBOR {
		t.Errorf("CBOR reply %+v: %+v", got.Properties, h)
	}
	// A response topic in another device's results is not honoured.
	d.send(t, "count", req("spoof"), mqttclient.Properties{ResponseTopic: topics.Result(rtPrefix, "v1", "other", "count")})
	if got = d.next(t); got.Topic != topics.Result(rtPrefix, "v1", d.id, "count") {
		t.Errorf("reply to %s", got.Topic)
	}
}

// TestRemoteThrottles: on a broker without mqttinfer's hooks the worker
// throttles each device, 429 with retry_after_ms and ratelimit.
func TestRemoteThrottles(t *testing.T) {
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{})
	lim, err := throttle.New(throttle.Config{Default: throttle.Limits{Rate: 0.01, Burst: 2, MaxInFlight: 4}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w := rtRun(t, m.URL(), "w", rtCore(t, reg, newCountModel()), func(o *RemoteOptions) { o.Throttle = lim })
	settled(t, w)
	d := rtConnect(t, m.URL(), "thr", mqttclient.V311)
	for i := range 3 {
		d.send(t, "count", req(fmt.Sprint(i)))
	}
	// A refusal is answered at once, so it may overtake the results.
	got := map[string]api.Result{}
	for range 3 {
		r := d.result(t)
		got[r.ID] = r
	}
	for i, want := range []int{200, 200, 429} {
		r := got[fmt.Sprint(i)]
		if r.Status != want || r.RateLimit == nil || r.RateLimit.Remaining != max(1-i, 0) {
			t.Errorf("%d: %+v %+v", i, r, r.RateLimit)
		}
		if want == 429 && (r.Error == nil || r.Error.RetryAfterMS <= 0) {
			t.Errorf("429 without retry_after_ms: %+v", r.Error)
		}
	}
}

// TestRemoteStreamsCancelsAndDedups: streams, a cancel that reaches the
// worker running the request, and a device's retry answered from the cache.
func TestRemoteStreamsCancelsAndDedups(t *testing.T) {
	url := rtBroker(t, nil)
	words := &streamTestModel{release: make(chan struct{})}
	count := newCountModel()
	w := rtRun(t, url, "w", rtCore(t, nil, words, count))
	settled(t, w)
	d := rtConnect(t, url, "sd", mqttclient.V5)
	d.send(t, "words", map[string]any{"id": "s1", "stream": true, "input": map[string]any{"text": "a b c"}})
	for seq, want := range []string{api.EventDelta, api.EventDelta, api.EventDelta, api.EventDone} {
		var ev api.StreamEvent
		if err := json.Unmarshal(d.next(t).Payload, &ev); err != nil || ev.Event != want || ev.Seq != seq {
			t.Fatalf("event %d: %+v %v", seq, ev, err)
		}
	}
	d.send(t, "words", map[string]any{"id": "s2", "stream": true, "input": map[string]any{"text": "a b", "wait": true}})
	var ev api.StreamEvent
	_ = json.Unmarshal(d.next(t).Payload, &ev)
	d.send(t, "words", map[string]any{"id": "s2", "cancel": true})
	if _ = json.Unmarshal(d.next(t).Payload, &ev); ev.Event != api.EventError || ev.Status != 499 {
		t.Fatalf("after cancel: %+v", ev)
	}
	d.send(t, "words", map[string]any{"id": "gone", "cancel": true})
	if r := d.result(t); r.Status != 400 {
		t.Fatalf("cancel of an unknown id: %+v", r)
	}
	// The same request again is answered from the cache; the same id with
	// another body is another request.
	d.send(t, "count", req("dup"))
	first := n(t, d.result(t))
	d.send(t, "count", req("dup"))
	if again := n(t, d.result(t)); again != first {
		t.Errorf("copy answered %d, first %d", again, first)
	}
	d.send(t, "count", map[string]any{"id": "dup", "input": map[string]any{"other": 1}})
	if next := n(t, d.result(t)); next != first+1 {
		t.Errorf("new body answered %d, want %d", next, first+1)
	}
}

func TestNewRemoteRejectsBadOptions(t *testing.T) {
	core := rtCore(t, nil, newCountModel())
	good := RemoteOptions{Broker: "tcp://127.0.0.1:1883", Group: "g", Node: "n"}
	for name, o := range map[string]RemoteOptions{
		"broker":   {Broker: "127.0.0.1:1883", Group: "g", Node: "n"},
		"group":    {Broker: good.Broker, Group: "a/b", Node: "n"},
		"node":     {Broker: good.Broker, Group: "g", Node: ""},
		"prefix":   {Broker: good.Broker, Group: "g", Node: "n", Prefix: "a/+"},
		"max size": {Broker: good.Broker, Group: "g", Node: "n", MaxRequestSize: -1},
	} {
		if _, err := NewRemote(core, o); err == nil {
			t.Errorf("%s: accepted %+v", name, o)
		}
	}
	if _, err := NewRemote(core, good); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRemote(nil, good); err == nil {
		t.Fatal("nil core accepted")
	}
}

// TestRemoteNodeConflict: a second worker with a node id a live worker of
// its group uses exits with a clear error; the first keeps serving.
func TestRemoteNodeConflict(t *testing.T) {
	url := rtBroker(t, nil)
	first := rtRun(t, url, "same", rtCore(t, nil, newCountModel()))
	settled(t, first)
	r, err := NewRemote(rtCore(t, nil, newCountModel()), RemoteOptions{Broker: url, Group: "g", Node: "same", Heartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rtWait)
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, errNodeConflict) {
		t.Fatalf("second worker: %v, want the node conflict", err)
	}
	d := rtConnect(t, url, "still", mqttclient.V5)
	d.send(t, "count", req("after"))
	if r := d.result(t); r.Status != 200 {
		t.Fatalf("%+v", r)
	}
	if err := first.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestRemoteTLSAndUnix: workers reach a broker with a private CA that
// requires a client certificate, and one on a Unix socket.
func TestRemoteTLSAndUnix(t *testing.T) {
	ca := testenv.NewCA(t)
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{TLS: ca, ClientCerts: true, Unix: true})
	tlsw := rtRun(t, "ssl://"+m.TLSAddr, "tls-w", rtCore(t, nil, newCountModel()), func(o *RemoteOptions) { o.TLS = ca.ClientTLS(t, "worker") })
	unixw := rtRun(t, "unix://"+m.Socket, "unix-w", rtCore(t, nil, newCountModel()))
	settled(t, tlsw, unixw)
	d := rtConnect(t, m.URL(), "sec-dev", mqttclient.V5)
	for i := range 20 {
		d.send(t, "count", req(fmt.Sprint(i)))
	}
	for i := range 20 {
		if r := d.result(t); n(t, r) != i+1 {
			t.Fatalf("%+v", r)
		}
	}
}

// TestRemoteMQTT311: workers that speak MQTT 3.1.1 (for brokers without
// MQTT 5) keep the group working: affinity, the copies, a takeover.
func TestRemoteMQTT311(t *testing.T) {
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{})
	v3 := func(o *RemoteOptions) { o.MQTTVersion = mqttclient.V311 }
	a := rtRun(t, m.URL(), "a3", rtCore(t, nil, newCountModel()), v3)
	b := rtRun(t, m.URL(), "b3", rtCore(t, nil, newCountModel()), v3)
	settled(t, a, b)
	var devs []*rtDevice
	for i := range 6 {
		devs = append(devs, rtConnect(t, m.URL(), fmt.Sprintf("v3-%d", i), mqttclient.V311))
	}
	for i := range 10 {
		for _, d := range devs {
			d.send(t, "count", req(fmt.Sprint(i)))
		}
	}
	for _, d := range devs {
		for i := range 10 {
			if r := d.result(t); r.ID != fmt.Sprint(i) || n(t, r) != i+1 {
				t.Fatalf("%s: %+v", d.id, r)
			}
		}
	}
	moved := map[string]bool{}
	for _, d := range devs {
		moved[d.id] = a.Serves(d.id)
	}
	a.stop(t) // b takes a's devices over, and starts their state afresh
	settled(t, b)
	for _, d := range devs {
		want := 11
		if moved[d.id] {
			want = 1
		}
		d.send(t, "count", req("after"))
		if r := d.result(t); r.ID != "after" || n(t, r) != want {
			t.Fatalf("%s (moved %v): %+v, want count %d", d.id, moved[d.id], r, want)
		}
	}
}
