package fleet

import (
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func request(dev, model, id string, received time.Time) *pipeline.Request {
	return &pipeline.Request{Topic: topics.Topic{Prefix: "mqttinfer", Version: "v1", Device: dev, Model: model},
		Body: api.Request{ID: id, Input: []byte(`{"sensor":"t","value":1}`)}, Received: received}
}

func reply(status int, body string) pipeline.Reply {
	return pipeline.Reply{Payload: []byte(body), Status: status, ContentType: "application/json"}
}

func TestObserveAndRead(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	f := New(Options{Now: c.now, Results: 3, Linger: time.Minute})
	f.Connected("d1")
	for i := range 5 {
		r := request("d1", "anomaly", fmt.Sprint("r", i), c.t)
		c.t = c.t.Add(10 * time.Millisecond)
		f.Observe(r, reply(200, fmt.Sprintf(`{"id":"r%d","model":"anomaly","status":200,"output":{"sensor":"t","value":%d,"is_anomaly":%v}}`, i, i, i == 4)))
	}
	f.Observe(request("d1", "anomaly", "x", c.t), reply(429, `{"id":"x","model":"anomaly","status":429,"error":{"type":"rate_limited","message":"slow down"}}`))

	s := f.Snapshot()
	if len(s.Devices) != 1 || s.Devices[0].Requests != 6 || s.Devices[0].Throttled != 1 || !s.Devices[0].Connected {
		t.Fatalf("devices %+v", s.Devices)
	}
	if lr := s.Devices[0].LastResult; lr == nil || lr.Status != 429 || lr.Result.Error.Type != api.RateLimited {
		t.Errorf("last result %+v", lr)
	}
	if len(s.Models) != 1 || s.Models[0].P50MS != 10 || s.Models[0].Rate != 0.6 {
		t.Errorf("models %+v", s.Models)
	}
	res, ok := f.Results("d1", 0)
	if !ok || len(res) != 3 || res[0].ID != "x" || res[2].ID != "r3" {
		t.Errorf("results (a ring of 3, newest first): %+v", res)
	}
	if a := f.Anomalies(0); len(a) != 1 || a[0].ID != "r4" || a[0].Sensor != "t" {
		t.Errorf("anomalies %+v", a)
	}
	l := f.Latest(0)
	if len(l) != 1 || l[0].ID != "x" || string(l[0].Input) != `{"sensor":"t","value":1}` {
		t.Errorf("latest %+v", l)
	}
	if more := f.Latest(l[0].Seq); len(more) != 0 {
		t.Errorf("latest after its seq: %+v", more)
	}

	// A device that leaves is forgotten after Linger, not before.
	f.Disconnected("d1")
	c.t = c.t.Add(59 * time.Second)
	if n := f.Forget(); n != 0 || f.Len() != 1 {
		t.Errorf("forgot %d before Linger", n)
	}
	c.t = c.t.Add(time.Second)
	if n := f.Forget(); n != 1 || f.Len() != 0 {
		t.Errorf("forgot %d after Linger, %d left", n, f.Len())
	}
}

func TestBounded(t *testing.T) {
	f := New(Options{MaxDevices: 2})
	for i := range 5 {
		f.Connected(fmt.Sprint("d", i))
	}
	if s := f.Snapshot(); len(s.Devices) != 2 || s.Untracked != 3 {
		t.Errorf("%d devices, %d untracked", len(s.Devices), s.Untracked)
	}
	// A payload over MaxPayload is kept as its size.
	big := make([]byte, MaxPayload+1)
	f.Observe(request("d0", "detect", "big", time.Now()), reply(200, string(big)))
	res, _ := f.Results("d0", 1)
	if len(res) != 1 || res[0].Result != nil || res[0].Size != len(big) {
		t.Errorf("big result %+v", res)
	}
}

func TestCBORReply(t *testing.T) {
	f := New(Options{})
	b, err := api.MarshalCBOR(api.Result{ID: "c", Model: "anomaly", Status: 200, Output: []byte(`{"is_anomaly":true,"value":5}`)})
	if err != nil {
		t.Fatal(err)
	}
	f.Observe(request("d", "anomaly", "c", time.Now()), pipeline.Reply{Payload: b, Status: 200, ContentType: api.ContentTypeCBOR})
	res, _ := f.Results("d", 1)
	if len(res) != 1 || res[0].Result == nil || string(res[0].Result.Output) != `{"is_anomaly":true,"value":5}` {
		t.Errorf("%+v", res)
	}
	if a := f.Anomalies(0); len(a) != 1 {
		t.Errorf("anomalies %+v", a)
	}
}
