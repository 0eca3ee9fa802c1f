package pipeline

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

func request(ver, device, model, body string) *Request {
	return &Request{
		Topic:    topics.Topic{Prefix: "p", Version: ver, Kind: topics.KindRequest, Device: device, Model: model},
		Payload:  []byte(body),
		QoS:      1,
		Received: time.Now(),
	}
}

func limiter(t *testing.T, rate float64, burst int) *throttle.Limiter {
	t.Helper()
	l, err := throttle.New(throttle.Config{Default: throttle.Limits{Rate: rate, Burst: burst, MaxInFlight: 2}, IdleTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAdmit(t *testing.T) {
	adm := &Admission{MaxSize: 64, HasModel: func(m string) bool { return m == "anomaly" }, Models: func() []string { return []string{"anomaly"} }}
	for _, c := range []struct {
		name, model, body string
		want              api.ErrorType
	}{
		{"ok", "anomaly", `{"input":{}}`, ""},
		{"too large", "anomaly", `{"input":"` + strings.Repeat("x", 64) + `"}`, api.PayloadTooLarge},
		{"not json", "anomaly", `{"input":`, api.InvalidRequest},
		{"unknown model", "nope", `{"input":{}}`, api.ModelNotFound},
		{"cancel without id", "anomaly", `{"cancel":true}`, api.InvalidRequest},
		{"cancel", "anomaly", `{"id":"x","cancel":true}`, ""},
	} {
		r := request("v1", "d1", c.model, c.body)
		e := adm.Admit(r)
		switch {
		case c.want == "" && e != nil:
			t.Errorf("%s: %v", c.name, e)
		case c.want != "" && (e == nil || e.Type != c.want):
			t.Errorf("%s: %v, want %s", c.name, e, c.want)
		}
	}
	// Without an id the request is named by its content, alike for every worker.
	a, b := request("v1", "d1", "anomaly", `{"input":{"v":1}}`), request("v1", "d1", "anomaly", `{"input":{"v":1}}`)
	if adm.Admit(a) != nil || adm.Admit(b) != nil || a.Body.ID == "" || a.Body.ID != b.Body.ID {
		t.Errorf("content ids %q %q", a.Body.ID, b.Body.ID)
	}
}

func TestAdmitThrottles(t *testing.T) {
	l := limiter(t, 0.001, 2)
	adm := &Admission{Throttle: l}
	r1, r2, r3 := request("v1", "d", "m", `{"id":"1","input":1}`), request("v1", "d", "m", `{"id":"2","input":1}`), request("v1", "d", "m", `{"id":"3","input":1}`)
	if adm.Admit(r1) != nil || adm.Admit(r2) != nil {
		t.Fatal("burst refused")
	}
	e := adm.Admit(r3)
	if e == nil || e.Type != api.RateLimited || e.RetryAfterMS <= 0 || r3.RateLimit == nil || r3.RateLimit.Remaining != 0 {
		t.Fatalf("third: %v %+v", e, r3.RateLimit)
	}
	// A refund gives the tokens back; Done frees the in-flight slot.
	r2.Refund()
	r2.Done()
	r4 := request("v1", "d", "m", `{"id":"4","input":1}`)
	if e := adm.Admit(r4); e != nil {
		t.Fatalf("after a refund: %v", e)
	}
	// The error reply echoes the id and the ratelimit.
	reply, err := adm.ErrorReply(r3, e)
	if err != nil {
		t.Fatal(err)
	}
	var res api.Result
	if err := json.Unmarshal(reply.Payload, &res); err != nil || res.ID != "3" || res.Status != 429 || res.RateLimit == nil {
		t.Fatalf("reply %s", reply.Payload)
	}
	if reply.Topic != "p/v1/res/d/m" || reply.Properties {
		t.Errorf("reply to %s, properties %v", reply.Topic, reply.Properties)
	}
}

func TestReplyAddressing(t *testing.T) {
	r := request("v2", "d", "m", `{"input":1}`)
	r.ContentType = api.ContentTypeCBOR
	r.ResponseTopic = "rr/d/replies"
	r.CorrelationData = []byte("c")
	reply, err := r.Reply(api.Result{ID: "x", Model: "m", Status: 200}, 200)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Topic != "rr/d/replies" || !reply.Properties || reply.ContentType != api.ContentTypeCBOR || string(reply.CorrelationData) != "c" || reply.StatusValue() != "200" {
		t.Fatalf("%+v", reply)
	}
	if h, ok := api.PeekReply(reply.Payload, reply.ContentType); !ok || h.ID != "x" || h.Status != 200 {
		t.Fatalf("not CBOR: %+v %v", h, ok)
	}
	// v1 stays JSON, whatever the content type.
	r.Topic.Version = "v1"
	if r.ReplyContentType() != "application/json" {
		t.Error("v1 answered in CBOR")
	}
}

func TestVetResponseTopic(t *testing.T) {
	tp := topics.Topic{Prefix: "p", Version: "v1", Kind: topics.KindRequest, Device: "d1", Model: "m"}
	for rt, want := range map[string]string{
		"":              "",
		"app/replies":   "app/replies",
		"p/v1/res/d1/m": "p/v1/res/d1/m",
		"p/v2/res/d1/x": "p/v2/res/d1/x",
		"p/v1/res/d2/m": "", // another device's results
		"p/v1/req/d1/m": "", // a request topic
		"app/+/x":       "",
		"$SYS/x":        "",
	} {
		if got := VetResponseTopic(tp, rt); got != want {
			t.Errorf("%q: %q, want %q", rt, got, want)
		}
	}
}
