package fleet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
)

// Snapshot is the whole view at one moment, as the dashboard and the
// list_devices tool show it.
type Snapshot struct {
	// Seq changes whenever the view does (Fleet.Seq).
	Seq uint64    `json:"seq"`
	At  time.Time `json:"at"`
	// Devices are the devices tracked, by id.
	Devices []Device `json:"devices"`
	// Untracked counts devices seen while MaxDevices were tracked.
	Untracked int64        `json:"untracked,omitempty"`
	Models    []ModelStats `json:"models"`
	Workers   []Worker     `json:"workers"`
}

// Device is one device's state.
type Device struct {
	ID        string `json:"id"`
	Connected bool   `json:"connected"`
	// Since is when it connected (zero when it was not seen connecting).
	Since time.Time `json:"since,omitzero"`
	// Requests, Errors and Throttled count the final replies it was sent:
	// all, those not 200 except 429, and the 429s.
	Requests    int64         `json:"requests"`
	Errors      int64         `json:"errors"`
	Throttled   int64         `json:"throttled"`
	LastRequest *RequestInfo  `json:"last_request,omitempty"`
	LastResult  *Result       `json:"last_result,omitempty"`
	Throttle    *ThrottleInfo `json:"throttle,omitempty"`
}

// RequestInfo says which request a device sent last.
type RequestInfo struct {
	Model string    `json:"model"`
	ID    string    `json:"id"`
	At    time.Time `json:"at"`
}

// ThrottleInfo is a device's throttle state now (throttle.State).
type ThrottleInfo struct {
	// Tokens in the bucket now, of Burst, refilled at Rate per second (0: no rate limit).
	Tokens      float64 `json:"tokens"`
	Burst       int     `json:"burst"`
	Rate        float64 `json:"rate"`
	InFlight    int     `json:"in_flight"`
	MaxInFlight int     `json:"max_in_flight"`
}

// Result is one reply a device was sent, decoded.
type Result struct {
	Device string    `json:"device"`
	Model  string    `json:"model"`
	ID     string    `json:"id"`
	Status int       `json:"status"`
	At     time.Time `json:"at"`
	// LatencyMS is the service's time from reading the request to sending
	// the reply, in milliseconds.
	LatencyMS float64 `json:"latency_ms"`
	// Result is the reply as the device got it (api.Result), absent when
	// it was larger than MaxPayload (Size says how large).
	Result *api.Result `json:"result,omitempty"`
	Size   int         `json:"size"`
}

// ModelStats are one model's numbers over the window.
type ModelStats struct {
	Model string `json:"model"`
	// Rate is replies per second over the window; ErrorRate those not 200.
	Rate      float64 `json:"rate"`
	ErrorRate float64 `json:"error_rate"`
	// P50MS and P99MS are latency percentiles (reading to reply) over the
	// window's latest replies, in milliseconds; 0 without replies.
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	// LatestSeq changes when the model's latest result does.
	LatestSeq uint64 `json:"latest_seq"`
}

// Worker is one worker serving the node's requests.
type Worker struct {
	Name      string   `json:"name"`
	Transport string   `json:"transport"`
	State     string   `json:"state"`
	Workers   int      `json:"workers,omitempty"`
	Queue     int      `json:"queue_depth"`
	Models    []string `json:"models,omitempty"`
}

// Latest is a model's latest request and its reply, for drawing: the input
// (an image, audio) beside the output.
type Latest struct {
	Seq    uint64          `json:"seq"`
	Model  string          `json:"model"`
	Device string          `json:"device"`
	ID     string          `json:"id"`
	At     time.Time       `json:"at"`
	Input  json.RawMessage `json:"input,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	// Stream holds the stream events so far of a streamed request (a chat
	// answer growing), as api.StreamEvent.
	Stream []json.RawMessage `json:"stream,omitempty"`
	// Result is the final reply, nil while a stream goes on.
	Result *Result `json:"result,omitempty"`
}

// Anomaly is one flagged point of a telemetry series.
type Anomaly struct {
	Device string    `json:"device"`
	Sensor string    `json:"sensor"`
	ID     string    `json:"id"`
	At     time.Time `json:"at"`
	// Point is the anomaly model's result for the point (sensor, value,
	// score, method, kind...).
	Point json.RawMessage `json:"point"`
}

// Snapshot returns the view now.
func (f *Fleet) Snapshot() Snapshot {
	now := f.opts.Now()
	f.mu.Lock()
	s := Snapshot{Seq: f.seq, At: now, Untracked: f.untracked, Devices: make([]Device, 0, len(f.devices))}
	type pending struct {
		i   int
		rec record
	}
	var last []pending
	for _, id := range sortedKeys(f.devices) {
		d := f.devices[id]
		dv := d.view()
		if r := d.results.newest(1); len(r) == 1 {
			last = append(last, pending{len(s.Devices), r[0]})
		}
		s.Devices = append(s.Devices, dv)
	}
	for _, name := range sortedKeys(f.models) {
		s.Models = append(s.Models, f.models[name].stats(now, f.opts.Window))
	}
	f.mu.Unlock()

	// Decoding and the throttle's locks happen outside the fleet's lock.
	for _, p := range last {
		r := p.rec.result()
		s.Devices[p.i].LastResult = &r
	}
	if l := f.opts.Throttle; l != nil {
		for i := range s.Devices {
			st := l.Snapshot(s.Devices[i].ID)
			s.Devices[i].Throttle = &ThrottleInfo{Tokens: st.Tokens, Burst: st.Limits.Burst, Rate: st.Limits.Rate, InFlight: st.InFlight, MaxInFlight: st.Limits.MaxInFlight}
		}
	}
	if f.opts.Workers != nil {
		s.Workers = f.opts.Workers()
	}
	if s.Workers == nil {
		s.Workers = []Worker{}
	}
	return s
}

// Results returns device's recent results, newest first, at most n (n <= 0:
// all kept); false when the device is not tracked.
func (f *Fleet) Results(device string, n int) ([]Result, bool) {
	f.mu.Lock()
	d := f.devices[device]
	if d == nil {
		f.mu.Unlock()
		return nil, false
	}
	recs := d.results.newest(n)
	f.mu.Unlock()
	out := make([]Result, len(recs))
	for i, r := range recs {
		out[i] = r.result()
	}
	return out, true
}

// Anomalies returns the recent anomalies, newest first, at most n (n <= 0: all kept).
func (f *Fleet) Anomalies(n int) []Anomaly {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.anomalies.newest(n)
}

// Latest returns each model's latest request and reply whose Seq is above
// after (0: all), by model name.
func (f *Fleet) Latest(after uint64) []Latest {
	type pending struct {
		l   Latest
		rec *record
	}
	var ps []pending
	f.mu.Lock()
	for _, name := range sortedKeys(f.models) {
		m := f.models[name]
		if m.latest == nil || m.seq <= after {
			continue
		}
		l := m.latest
		p := pending{l: Latest{Seq: m.seq, Model: name, Device: l.rec.device, ID: l.rec.id, At: l.rec.at,
			Input: l.input, Params: l.params, Stream: rawList(l.stream)}}
		if l.final {
			rec := l.rec
			p.rec = &rec
		}
		ps = append(ps, p)
	}
	f.mu.Unlock()
	out := make([]Latest, len(ps))
	for i, p := range ps {
		out[i] = p.l
		if p.rec != nil {
			r := p.rec.result()
			out[i].Result = &r
		}
	}
	return out
}

func rawList(bs [][]byte) []json.RawMessage {
	if len(bs) == 0 {
		return nil
	}
	out := make([]json.RawMessage, 0, len(bs))
	for _, b := range bs {
		if b != nil {
			out = append(out, b)
		}
	}
	return out
}

// view is the device's Device without its last result and throttle state.
func (d *device) view() Device {
	return Device{ID: d.id, Connected: d.connected, Since: d.since, Requests: d.requests, Errors: d.errors, Throttled: d.throttled, LastRequest: d.lastReq}
}

// stats computes a model's numbers over the window ending at now.
func (m *model) stats(now time.Time, window time.Duration) ModelStats {
	st := ModelStats{Model: m.name, LatestSeq: m.seq}
	from := now.Add(-window)
	count := func(ts []time.Time) int {
		n := 0
		for _, t := range ts {
			if t.After(from) {
				n++
			}
		}
		return n
	}
	secs := window.Seconds()
	st.Rate = float64(count(m.stamps.buf)) / secs
	st.ErrorRate = float64(count(m.errors.buf)) / secs
	var ds []time.Duration
	for _, s := range m.latencies.buf {
		if s.at.After(from) {
			ds = append(ds, s.d)
		}
	}
	if len(ds) > 0 {
		slices.Sort(ds)
		st.P50MS = ms(percentile(ds, 0.50))
		st.P99MS = ms(percentile(ds, 0.99))
	}
	return st
}

// percentile is the nearest-rank percentile of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	i := int(p*float64(len(ds))+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// result decodes a record.
func (r record) result() Result {
	out := Result{Device: r.device, Model: r.model, ID: r.id, Status: r.status, At: r.at, LatencyMS: ms(r.latency), Size: r.size}
	if r.payload != nil {
		if res, err := decodeResult(r.payload, r.cbor); err == nil {
			out.Result = &res
		}
	}
	return out
}

// decodeResult decodes a final reply: an api.Result, or a stream's done or
// error event read as one.
func decodeResult(payload []byte, isCBOR bool) (api.Result, error) {
	js := payload
	if isCBOR {
		var v any
		if err := cbor.Unmarshal(payload, &v); err != nil {
			return api.Result{}, err
		}
		b, err := json.Marshal(jsonable(v))
		if err != nil {
			return api.Result{}, err
		}
		js = b
	}
	var res api.Result
	if err := json.Unmarshal(js, &res); err != nil {
		return res, fmt.Errorf("decode reply: %w", err)
	}
	return res, nil
}

// jsonable turns CBOR's map[any]any into JSON's map[string]any.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	}
	return v
}

func isCBOR(reply pipeline.Reply) bool { return reply.ContentType == api.ContentTypeCBOR }

// anomalyFlag is how a flagged point reads in a JSON result; results
// without it are not decoded at all.
var anomalyFlag = []byte(`"is_anomaly":true`)

// anomaliesOf returns the flagged points of an anomaly result: its output
// (one point) or its batch outputs.
func anomaliesOf(rec record) []Anomaly {
	if rec.payload == nil || (!rec.cbor && !bytes.Contains(rec.payload, anomalyFlag)) {
		return nil
	}
	res, err := decodeResult(rec.payload, rec.cbor)
	if err != nil {
		return nil
	}
	outputs := []json.RawMessage{res.Output}
	for _, it := range res.Outputs {
		outputs = append(outputs, it.Output)
	}
	var out []Anomaly
	for _, o := range outputs {
		var p struct {
			Sensor    string            `json:"sensor"`
			IsAnomaly bool              `json:"is_anomaly"`
			Results   []json.RawMessage `json:"results"`
		}
		if len(o) == 0 || json.Unmarshal(o, &p) != nil {
			continue
		}
		if p.IsAnomaly {
			out = append(out, Anomaly{Device: rec.device, Sensor: p.Sensor, ID: rec.id, At: rec.at, Point: o})
		}
		for _, r := range p.Results { // a series of values in one request
			if bytes.Contains(r, anomalyFlag) {
				out = append(out, Anomaly{Device: rec.device, Sensor: p.Sensor, ID: rec.id, At: rec.at, Point: r})
			}
		}
	}
	return out
}
