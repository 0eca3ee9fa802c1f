package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
)

// coreTestModel is a real if small model: it adds up {"xs": [...]}, and
// behaves badly on request (blocks, panics, fails) for the error paths.
type coreTestModel struct {
	name        string
	unavailable string
	block       chan struct{} // when set, Infer waits on it (or ctx)
}

func (m *coreTestModel) Info() inference.Info {
	return inference.Info{Name: m.name, Version: "3", Cost: 1, Unavailable: m.unavailable}
}

func (m *coreTestModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	var in struct {
		Xs   []float64 `json:"xs"`
		Mode string    `json:"mode"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil {
		return nil, inference.InvalidInput("input: want {\"xs\": [numbers]}: %v", err)
	}
	switch in.Mode {
	case "panic":
		panic("boom")
	case "fail":
		return nil, errors.New("backend exploded")
	case "busy":
		return nil, &inference.UnavailableError{Msg: "backend rate limited", RetryAfter: 2 * time.Second}
	case "block":
		select {
		case <-m.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	sum := 0.0
	for _, x := range in.Xs {
		sum += x
	}
	return map[string]any{"sum": sum, "device": req.Device}, nil
}

func coreTestRegistry(t *testing.T, models ...inference.Model) *inference.Registry {
	t.Helper()
	reg := &inference.Registry{}
	for _, m := range models {
		if err := reg.Register(m); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

func TestCoreRun(t *testing.T) {
	block := make(chan struct{})
	core := &Core{
		Models:          coreTestRegistry(t, &coreTestModel{name: "sum", block: block}, &coreTestModel{name: "off", unavailable: "weights missing"}),
		DefaultDeadline: time.Minute,
	}
	job := func(model, input string) Job {
		return Job{Version: "v1", Device: "d1", Model: model, Received: time.Now(),
			Request: api.Request{ID: "r1", Input: json.RawMessage(input)}}
	}
	cases := []struct {
		name   string
		job    Job
		status int
		typ    api.ErrorType
	}{
		{"ok", job("sum", `{"xs":[1,2,3.5]}`), 200, ""},
		{"invalid input", job("sum", `{"xs":"nope"}`), 422, api.InvalidInput},
		{"unknown model", job("nope", `{}`), 404, api.ModelNotFound},
		{"unavailable", job("off", `{}`), 503, api.ModelUnavailable},
		{"panic", job("sum", `{"mode":"panic"}`), 500, api.InferenceFailed},
		{"fail", job("sum", `{"mode":"fail"}`), 500, api.InferenceFailed},
		{"backend unavailable", job("sum", `{"mode":"busy"}`), 503, api.ModelUnavailable},
		{"waited past deadline", func() Job {
			j := job("sum", `{"xs":[1]}`)
			j.Received = time.Now().Add(-2 * time.Second)
			j.Request.DeadlineMS = 1000
			return j
		}(), 408, api.DeadlineExceeded},
		{"deadline during inference", func() Job {
			j := job("sum", `{"mode":"block"}`)
			j.Request.DeadlineMS = 20
			return j
		}(), 408, api.DeadlineExceeded},
		{"cancel without a stream", func() Job {
			j := job("sum", `{}`)
			j.Request.Cancel = true
			return j
		}(), 400, api.InvalidRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := core.Run(context.Background(), c.job)
			if res.Status != c.status || res.ID != "r1" || res.Model != c.job.Model {
				t.Fatalf("result %+v (error %+v), want status %d", res, res.Error, c.status)
			}
			if c.status == 200 {
				if string(res.Output) != `{"device":"d1","sum":6.5}` || res.ModelVersion != "3" {
					t.Errorf("output %s version %q", res.Output, res.ModelVersion)
				}
				return
			}
			if res.Error == nil || res.Error.Type != c.typ || res.Error.Message == "" || res.Output != nil {
				t.Errorf("error %+v, want type %s", res.Error, c.typ)
			}
		})
	}
	if e := core.Run(context.Background(), job("sum", `{"mode":"busy"}`)).Error; e.RetryAfterMS != 2000 {
		t.Errorf("503 retry_after_ms %d, want 2000", e.RetryAfterMS)
	}
	if e := core.Run(context.Background(), job("nope", `{}`)).Error; len(e.Models) != 2 {
		t.Errorf("404 lists %v", e.Models)
	}
}

func TestCoreDeadlineCap(t *testing.T) {
	core := &Core{DefaultDeadline: 5 * time.Second, MaxDeadline: 10 * time.Second}
	now := time.Now()
	for _, c := range []struct {
		ms   int64
		want time.Duration
	}{{0, 5 * time.Second}, {2000, 2 * time.Second}, {3_600_000, 10 * time.Second}} {
		if got := core.Deadline(Job{Received: now, Request: api.Request{DeadlineMS: c.ms}}).Sub(now); got != c.want {
			t.Errorf("deadline_ms %d: %v, want %v", c.ms, got, c.want)
		}
	}
}

// recorder is a Replier that keeps the last reply per result topic.
type recorder struct {
	mu   sync.Mutex
	msgs map[string][]byte
	got  chan string
}

func (r *recorder) Send(reply pipeline.Reply, qos byte) error {
	topic := reply.Topic
	r.mu.Lock()
	r.msgs[topic] = reply.Payload
	r.mu.Unlock()
	r.got <- topic
	return nil
}

func TestPoolQueueFullAndDrain(t *testing.T) {
	block := make(chan struct{})
	core := &Core{Models: coreTestRegistry(t, &coreTestModel{name: "sum", block: block}), DefaultDeadline: time.Minute}
	pool := NewPool(core, 1, 2)
	rec := &recorder{msgs: map[string][]byte{}, got: make(chan string, 16)}
	pool.Start(rec)

	var done sync.WaitGroup
	dispatch := func(device, input string) error {
		done.Add(1)
		r := &pipeline.Request{
			Topic:    topics.Topic{Prefix: "p", Version: "v1", Kind: topics.KindRequest, Device: device, Model: "sum"},
			Body:     api.Request{ID: device, Input: json.RawMessage(input)},
			Received: time.Now(),
		}
		err := pool.Serve(r, rec, Task{Done: done.Done})
		if err != nil {
			done.Done()
		}
		return err
	}
	// One running (blocked), two queued: the fourth finds the queue full.
	if err := dispatch("d0", `{"mode":"block"}`); err != nil {
		t.Fatal(err)
	}
	waitBusy := time.Now().Add(10 * time.Second)
	for pool.QueueDepth() != 0 && time.Now().Before(waitBusy) {
		time.Sleep(time.Millisecond) // until the worker has taken d0
	}
	for _, d := range []string{"d1", "d2"} {
		if err := dispatch(d, `{"xs":[1]}`); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
	}
	err := pool.Dispatch(&pipeline.Request{})
	var e *api.Error
	if !errors.As(err, &e) || e.Type != api.Overloaded {
		t.Fatalf("full queue: %v, want overloaded", err)
	}

	// Stop drains: the blocked request and the queued ones are all answered.
	stopped := make(chan error, 1)
	go func() { stopped <- pool.Stop(context.Background()) }()
	close(block)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	done.Wait()
	if len(rec.msgs) != 3 {
		t.Fatalf("answered %d of 3: %v", len(rec.msgs), rec.msgs)
	}
	var r api.Result
	_ = json.Unmarshal(rec.msgs[topics.Result("p", "v1", "d0", "sum")], &r)
	if r.Status != 200 {
		t.Errorf("blocked request: %+v", r)
	}
	if err := pool.Dispatch(&pipeline.Request{}); !errors.As(err, &e) || e.Type != api.Overloaded {
		t.Errorf("dispatch after stop: %v", err)
	}
}
