package pipeline

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// FuzzVetResponseTopic vets any MQTT 5 response topic of a request of any
// device: what comes back is "" or the topic itself; a topic that comes
// back has no wildcard, is not a '$' topic, and under the prefix is one of
// the requesting device's own result topics. The device's own result
// topics always pass, another device's never.
func FuzzVetResponseTopic(f *testing.F) {
	for _, s := range [][4]string{
		{topics.DefaultPrefix, "rr-dev", "anomaly", "rr-dev/replies"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v1/res/rr-dev/anomaly"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v2/res/rr-dev/chat"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v1/res/other/anomaly"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v1/req/rr-dev/anomaly"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v9/res/rr-dev/anomaly"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v1/sent/rr-dev/anomaly"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v1/status/n1"},
		{topics.DefaultPrefix, "rr-dev", "anomaly", "mqttinfer/v1/models"},
		{topics.DefaultPrefix, "d", "m", "mqttinfer/v1/res/+/m"},
		{topics.DefaultPrefix, "d", "m", "replies/#"},
		{topics.DefaultPrefix, "d", "m", "$SYS/broker/uptime"},
		{topics.DefaultPrefix, "d", "m", "mqttinfer"},
		{topics.DefaultPrefix, "d", "m", "mqttinferx/v1/res/d/m"},
		{topics.DefaultPrefix, "d", "m", "mqttinfer//v1/res/d/m"},
		{topics.DefaultPrefix, "d", "m", ""},
		{"acme/plant1", "meter-01", "ocr", "acme/plant1/v1/res/meter-01/ocr"},
		{"acme/plant1", "meter-01", "ocr", "acme/plant2/v1/res/meter-02/ocr"},
		{"acme/plant1", "meter-01", "ocr", "acme/v1/res/meter-01/ocr"},
	} {
		f.Add(s[0], s[1], s[2], false, s[3])
		f.Add(s[0], s[1], s[2], true, s[3])
	}
	f.Fuzz(func(t *testing.T, prefix, device, model string, v2 bool, rt string) {
		ver := "v1"
		if v2 {
			ver = "v2"
		}
		if topics.ValidPrefix(prefix) != nil {
			return
		}
		tp, err := topics.Parse(prefix, topics.Request(prefix, ver, device, model))
		if err != nil || tp.Kind != topics.KindRequest {
			return // no request reaches vetting without a valid topic
		}
		got := VetResponseTopic(tp, rt)
		if got != "" && got != rt {
			t.Fatalf("VetResponseTopic(%+v, %q) = %q: neither the topic nor \"\"", tp, rt, got)
		}
		if got != "" {
			if strings.ContainsAny(got, "+#") || strings.HasPrefix(got, "$") {
				t.Fatalf("VetResponseTopic(%+v, %q) passed a wildcard or '$' topic", tp, rt)
			}
			if topics.Under(prefix, got) {
				p, err := topics.Parse(prefix, got)
				if err != nil || p.Kind != topics.KindResult || p.Device != device {
					t.Fatalf("VetResponseTopic(%+v, %q) passed a topic under the prefix that is not the device's result topic: %+v, %v", tp, rt, p, err)
				}
			}
		}
		for _, v := range topics.Versions() {
			own := topics.Result(prefix, v, device, model)
			if VetResponseTopic(tp, own) != own {
				t.Fatalf("VetResponseTopic(%+v) refused the device's own result topic %q", tp, own)
			}
			if other := device + "x"; topics.ValidID(other) == nil {
				if VetResponseTopic(tp, topics.Result(prefix, v, other, model)) != "" {
					t.Fatalf("VetResponseTopic(%+v) passed the result topic of device %q", tp, other)
				}
			}
		}
	})
}

// Admission limits of FuzzAdmit: small, so that a few requests reach every
// limit.
const (
	fuzzMaxSize = 1024
	fuzzBurst   = 4
	fuzzDevice  = "thermo-1"
)

// admitModes picks the version, content type and model of a FuzzAdmit
// request from the bits of its mode argument: anomaly costs 1, chat 2,
// nope does not exist.
func admitMode(mode uint8) (version, contentType, model string) {
	version = []string{"v1", "v2"}[mode&1]
	if mode&2 != 0 {
		contentType = api.ContentTypeCBOR
	}
	model = []string{"anomaly", "chat", "nope", "anomaly"}[mode>>2&3]
	return version, contentType, model
}

func admitSeeds(tb testing.TB) [][]byte {
	seeds := [][]byte{
		[]byte(`{"id":"r-1","input":{"sensor":"temp","value":21.5}}`),
		[]byte(`{"input":{"sensor":"temp","value":21.5}}`),
		[]byte(`{"id":"b-2","inputs":[{"sensor":"t","value":1},{"sensor":"t","value":2}]}`),
		[]byte(`{"inputs":[1,2,3,4,5]}`),
		[]byte(`{"id":"q1","stream":true,"input":{"prompt":"Why is the sky blue?"}}`),
		[]byte(`{"id":"q1","cancel":true}`), []byte(`{"cancel":true}`),
		[]byte(`{"id":"r-3","input":1,"deadline_ms":-5}`), []byte(`{"id":"r-4"`), []byte(``),
		[]byte(`{"input":"` + strings.Repeat("x", fuzzMaxSize) + `"}`),
	}
	for _, v := range []map[string]any{
		{"id": "r-5", "input": map[string]any{"sensor": "temp", "value": 21.5}},
		{"inputs": []any{1, 2, 3}},
		{"id": "q2", "cancel": true},
	} {
		b, err := cbor.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// FuzzAdmit admits the same request four times in a row, with a small
// throttle (burst 4, two in flight, chat costing 2) and a stopped clock.
// Admit must never panic; an error is one admission can give, charges
// nothing and has an error reply that reads back with its status and the
// request's id; a cancel is free; an admitted request has an id that fits
// and is charged; and refunding every admitted request leaves the device's
// bucket as it was.
func FuzzAdmit(f *testing.F) {
	for _, s := range admitSeeds(f) {
		for mode := range uint8(16) {
			f.Add(mode, s)
		}
	}
	models := []string{"anomaly", "chat"}
	f.Fuzz(func(t *testing.T, mode uint8, payload []byte) {
		version, ct, model := admitMode(mode)
		now := time.Unix(1_732_500_000, 0)
		l, err := throttle.New(throttle.Config{
			Default: throttle.Limits{Rate: 1, Burst: fuzzBurst, MaxInFlight: 2},
			Costs:   map[string]int{"chat": 2},
			Now:     func() time.Time { return now },
		})
		if err != nil {
			t.Fatal(err)
		}
		a := &Admission{
			MaxSize:  fuzzMaxSize,
			HasModel: func(name string) bool { return slices.Contains(models, name) },
			Models:   func() []string { return models },
			Throttle: l,
		}
		tp, err := topics.Parse(topics.DefaultPrefix, topics.Request(topics.DefaultPrefix, version, fuzzDevice, model))
		if err != nil {
			t.Fatal(err)
		}
		initial := l.Peek(fuzzDevice, model)
		var admitted []*Request
		for range 4 {
			r := &Request{Topic: tp, Payload: payload, ContentType: ct, QoS: 1, Received: now}
			before := l.Peek(fuzzDevice, model)
			e := a.Admit(r)
			after := l.Peek(fuzzDevice, model)
			if e != nil {
				checkRefusal(t, a, r, e, len(payload))
				if after != before {
					t.Fatalf("%s %q: refused with %v, yet charged: %+v, then %+v", version, payload, e, before, after)
				}
				r.Refund()
				r.Done()
				if again := l.Peek(fuzzDevice, model); again != before {
					t.Fatalf("%s %q: Refund and Done of a refused request changed the bucket: %+v, then %+v", version, payload, before, again)
				}
				continue
			}
			if id := r.Body.ID; id == "" || len(id) > api.MaxRequestIDLen {
				t.Fatalf("%s %q: admitted with id %q", version, payload, id)
			}
			if r.Body.Cancel {
				if after != before {
					t.Fatalf("%s %q: a cancel was charged: %+v, then %+v", version, payload, before, after)
				}
				continue
			}
			if r.RateLimit == nil || after == before {
				t.Fatalf("%s %q: admitted without a charge: %+v, then %+v (ratelimit %+v)", version, payload, before, after, r.RateLimit)
			}
			admitted = append(admitted, r)
		}
		for _, r := range admitted {
			r.Refund()
			r.Done()
			r.Done()
		}
		if final := l.Peek(fuzzDevice, model); final != initial {
			t.Fatalf("%s %q: refunding every admitted request left %+v, want %+v", version, payload, final, initial)
		}
	})
}

// checkRefusal checks an admission error and the reply it gives.
func checkRefusal(t *testing.T, a *Admission, r *Request, e *api.Error, size int) {
	t.Helper()
	switch e.Type {
	case api.InvalidRequest, api.ModelNotFound:
	case api.PayloadTooLarge:
		if size <= fuzzMaxSize && len(r.Body.Inputs) == 0 {
			t.Fatalf("%q: 413 for %d bytes and no batch: %v", r.Payload, size, e)
		}
	case api.RateLimited:
		if e.RetryAfterMS < 1 || r.RateLimit == nil {
			t.Fatalf("%q: 429 without retry_after_ms or ratelimit: %+v, %+v", r.Payload, e, r.RateLimit)
		}
	default:
		t.Fatalf("%q: admission error of type %s: %v", r.Payload, e.Type, e)
	}
	if e.Message == "" {
		t.Fatalf("%q: error %s without a message", r.Payload, e.Type)
	}
	reply, err := a.ErrorReply(r, e)
	if err != nil {
		t.Fatalf("%q: error reply to %v: %v", r.Payload, e, err)
	}
	if reply.Topic != r.Topic.ResultTopic() || reply.Status != e.Status() {
		t.Fatalf("%q: error reply on %q with status %d, want %q and %d", r.Payload, reply.Topic, reply.Status, r.Topic.ResultTopic(), e.Status())
	}
	h, ok := api.PeekReply(reply.Payload, reply.ContentType)
	if !ok || h.Status != e.Status() || h.ID != r.ID() || len(h.ID) > api.MaxRequestIDLen {
		t.Fatalf("%q: error reply %q reads back as %+v, %v; want status %d and id %q", r.Payload, reply.Payload, h, ok, e.Status(), r.ID())
	}
}
