// Package fleet owns the service's live view of its devices, shared by the
// dashboard and the MCP server: the devices connected to the embedded broker
// with their last request and result, their throttle state, per-model
// request rate and latency, the node's workers, the recent results of each
// device and the recent anomalies.
//
// A Fleet is fed on the service's own path: the broker tells it who connects
// and leaves (it is a broker.Sessions), and the in-process transport tells it
// every reply it sends with the request it answers (Observe). Feeding costs a
// lock and a few appends per reply; payloads are kept as sent and decoded
// only when someone reads them. Memory is bounded: a device that leaves is
// forgotten after Options.Linger, at most Options.MaxDevices are tracked, and
// every list is a ring of fixed size.
package fleet

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// Defaults of Options' zero fields.
const (
	DefaultResults    = 8
	DefaultAnomalies  = 64
	DefaultMaxDevices = 10000
	DefaultWindow     = 10 * time.Second
	DefaultLinger     = time.Minute
	// MaxPayload is the largest reply or input kept, in bytes: a bigger one
	// is kept as a note of its size (a camera frame's input is kept whole
	// up to the service's request limit only for the models' latest).
	MaxPayload = 16 << 10
	// MaxLatestInput is the largest request input kept with a model's
	// latest result, for the dashboard to draw it (a camera frame).
	MaxLatestInput = 256 << 10
	// latencySamples is how many latencies per model the percentiles are
	// computed from (the latest, within the window).
	latencySamples = 512
	// maxStream is how many stream events of a model's latest streamed
	// request are kept.
	maxStream = 512
)

// Options configure a Fleet. The zero value is useful.
type Options struct {
	// Throttle, when set, gives each device's throttle state.
	Throttle *throttle.Limiter
	// Workers, when set, lists the workers serving this node's requests now.
	Workers func() []Worker
	// Results is how many recent results are kept per device.
	Results int
	// Anomalies is how many recent anomalies are kept.
	Anomalies int
	// MaxDevices bounds the devices tracked; more are counted, not kept.
	MaxDevices int
	// Window is the time over which rates and latency percentiles are computed.
	Window time.Duration
	// Linger is how long a device is remembered after it disconnected (or,
	// never seen connecting, after its last reply).
	Linger time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Fleet is the live view. It is safe for concurrent use.
type Fleet struct {
	opts Options

	mu        sync.Mutex
	devices   map[string]*device
	models    map[string]*model
	anomalies ring[Anomaly]
	untracked int64 // devices not kept because MaxDevices were
	seq       uint64
}

// New returns an empty Fleet.
func New(opts Options) *Fleet {
	opts.Results = cmp.Or(max(opts.Results, 0), DefaultResults)
	opts.Anomalies = cmp.Or(max(opts.Anomalies, 0), DefaultAnomalies)
	opts.MaxDevices = cmp.Or(max(opts.MaxDevices, 0), DefaultMaxDevices)
	opts.Window = cmp.Or(max(opts.Window, 0), DefaultWindow)
	opts.Linger = cmp.Or(max(opts.Linger, 0), DefaultLinger)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Fleet{
		opts:      opts,
		devices:   make(map[string]*device),
		models:    make(map[string]*model),
		anomalies: newRing[Anomaly](opts.Anomalies),
	}
}

// device is one device's state.
type device struct {
	id        string
	connected bool
	since     time.Time // connected at
	gone      time.Time // disconnected at, or last reply when never connected
	requests  int64
	errors    int64
	throttled int64
	lastReq   *RequestInfo
	results   ring[record]
}

// record is one final reply as sent, decoded when read.
type record struct {
	device, model, id string
	status            int
	at                time.Time
	latency           time.Duration
	payload           []byte // nil when over MaxPayload
	size              int
	cbor              bool
}

// model is one model's live statistics and latest result.
type model struct {
	name      string
	stamps    ring[time.Time]     // arrival of recent replies (rate)
	latencies ring[latencySample] // recent latencies (percentiles)
	errors    ring[time.Time]     // recent error replies
	latest    *latest
	seq       uint64 // of the latest change
}

type latencySample struct {
	at time.Time
	d  time.Duration
}

// latest is a model's latest request with its reply: what the dashboard draws.
type latest struct {
	rec    record
	input  []byte // the request's input, nil when over MaxLatestInput
	params []byte
	stream [][]byte // the events of a streamed request so far, deltas first
	final  bool
}

// Observe records a reply the service sends to r: a result, an error, or a
// stream event. It keeps references to r's input and to the payload, which
// must not change afterwards (the service's never do).
func (f *Fleet) Observe(r *pipeline.Request, reply pipeline.Reply) {
	now := f.opts.Now()
	dev, mdl, id := r.Device(), r.Topic.Model, r.Body.ID
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	m := f.model(mdl)
	if !reply.Final() {
		// A delta of a stream: the model's latest grows.
		if m.latest == nil || m.latest.rec.device != dev || m.latest.rec.id != id || m.latest.final {
			m.latest = &latest{rec: record{device: dev, model: mdl, id: id, at: now}, input: keep(r.Body.Input, MaxLatestInput), params: keep(r.Body.Params, MaxPayload)}
		}
		if len(m.latest.stream) < maxStream {
			m.latest.stream = append(m.latest.stream, keep(reply.Payload, MaxPayload))
		}
		m.seq = f.seq
		return
	}
	rec := record{device: dev, model: mdl, id: id, status: reply.Status, at: now, latency: now.Sub(r.Received),
		payload: keep(reply.Payload, MaxPayload), size: len(reply.Payload), cbor: isCBOR(reply)}
	m.stamps.push(now)
	m.latencies.push(latencySample{now, rec.latency})
	if reply.Status != 200 {
		m.errors.push(now)
	}
	l := m.latest
	if l == nil || l.rec.device != dev || l.rec.id != id || l.final {
		l = &latest{input: keep(r.Body.Input, MaxLatestInput), params: keep(r.Body.Params, MaxPayload)}
		m.latest = l
	}
	l.rec, l.final = rec, true
	m.seq = f.seq

	if d := f.device(dev, now); d != nil {
		d.requests++
		switch {
		case reply.Status == 429:
			d.throttled++
		case reply.Status != 200:
			d.errors++
		}
		d.lastReq = &RequestInfo{Model: mdl, ID: id, At: r.Received}
		d.results.push(rec)
		if !d.connected {
			d.gone = now
		}
	}
	if mdl == "anomaly" && reply.Status == 200 {
		for _, a := range anomaliesOf(rec) {
			f.anomalies.push(a)
		}
	}
}

// model returns the state of model name, created when new. f.mu is held.
func (f *Fleet) model(name string) *model {
	m := f.models[name]
	if m == nil {
		m = &model{name: name, stamps: newRing[time.Time](latencySamples * 4),
			latencies: newRing[latencySample](latencySamples), errors: newRing[time.Time](latencySamples)}
		f.models[name] = m
	}
	return m
}

// device returns the state of device id, created when new; nil when the
// fleet is full. f.mu is held.
func (f *Fleet) device(id string, now time.Time) *device {
	if d := f.devices[id]; d != nil {
		return d
	}
	if len(f.devices) >= f.opts.MaxDevices {
		f.untracked++
		return nil
	}
	d := &device{id: id, gone: now, results: newRing[record](f.opts.Results)}
	f.devices[id] = d
	return d
}

// Connected records that a client of device connected (broker.Sessions).
func (f *Fleet) Connected(device string) {
	now := f.opts.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	if d := f.device(device, now); d != nil {
		d.connected, d.since = true, now
	}
}

// Disconnected records that a client of device left (broker.Sessions); the
// device's state is released Options.Linger later.
func (f *Fleet) Disconnected(device string) {
	now := f.opts.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	if d := f.devices[device]; d != nil {
		d.connected, d.gone = false, now
	}
}

// Subscribed is part of broker.Sessions; the fleet does not need it.
func (f *Fleet) Subscribed(string) {}

// Sent is part of broker.Sessions; the fleet does not need it.
func (f *Fleet) Sent(string, uint16) {}

// Acked is part of broker.Sessions; the fleet does not need it.
func (f *Fleet) Acked(string, uint16) {}

// Forget releases, now, the state of every device that has been gone for
// Options.Linger, and returns how many it released.
func (f *Fleet) Forget() int {
	now := f.opts.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for id, d := range f.devices {
		if !d.connected && now.Sub(d.gone) >= f.opts.Linger {
			delete(f.devices, id)
			n++
		}
	}
	if n > 0 {
		f.seq++
	}
	return n
}

// Run calls Forget every Linger/4 (at least every second) until ctx ends.
func (f *Fleet) Run(ctx context.Context) { inference.EvictEvery(ctx, f.opts.Linger, f.Forget) }

// Seq is a number that changes whenever the view does: a reader polls it
// to learn whether there is anything new.
func (f *Fleet) Seq() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// Len is the number of devices tracked.
func (f *Fleet) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.devices)
}

// ring is a bounded list that drops its oldest entry when full. It grows
// as entries come (a device that sent one request holds one), up to size.
type ring[T any] struct {
	buf  []T
	size int
	next int
	full bool
}

func newRing[T any](n int) ring[T] { return ring[T]{size: n} }

func (r *ring[T]) push(v T) {
	if len(r.buf) < r.size {
		r.buf = append(r.buf, v)
		return
	}
	r.buf[r.next] = v
	r.next = (r.next + 1) % len(r.buf)
	r.full = true
}

// newest returns up to n entries, newest first (n <= 0: all).
func (r *ring[T]) newest(n int) []T {
	if n <= 0 || n > len(r.buf) {
		n = len(r.buf)
	}
	out := make([]T, 0, n)
	for i := 0; i < n; i++ {
		j := (r.next - 1 - i + 2*len(r.buf)) % len(r.buf)
		if !r.full {
			j = len(r.buf) - 1 - i
		}
		out = append(out, r.buf[j])
	}
	return out
}

// keep returns b, or nil when it is larger than limit.
func keep(b []byte, limit int) []byte {
	if len(b) > limit {
		return nil
	}
	return b
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
