package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
)

// streamTestModel streams the words of {"text": "..."} one by one; with
// "wait" it stops after the first word until released or canceled.
type streamTestModel struct{ release chan struct{} }

type streamOut struct {
	Words int `json:"words"`
}

func (o streamOut) Consumed() (any, float64) {
	return map[string]int{"words": o.Words}, float64(o.Words) / 10
}

func (m *streamTestModel) Info() inference.Info {
	return inference.Info{Name: "words", Version: "1", Cost: 10, Streaming: true}
}

func (m *streamTestModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	return m.InferStream(ctx, req, func(any) error { return nil })
}

func (m *streamTestModel) InferStream(ctx context.Context, req inference.Request, emit func(any) error) (any, error) {
	var in struct {
		Text string `json:"text"`
		Wait bool   `json:"wait"`
	}
	if err := json.Unmarshal(req.Input, &in); err != nil || in.Text == "" {
		return nil, inference.InvalidInput("input.text: want a non-empty string")
	}
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
	return streamOut{Words: len(words)}, nil
}

func TestPoolStreamsAndCancels(t *testing.T) {
	model := &streamTestModel{release: make(chan struct{})}
	core := &Core{Models: coreTestRegistry(t, model), DefaultDeadline: time.Minute}
	pool := NewPool(core, 2, 4)
	pool.Start(nil)
	t.Cleanup(func() { _ = pool.Stop(context.Background()) })

	var done chan struct{}
	run := func(id, input string, stream bool) (chan api.StreamEvent, chan api.Result, chan float64) {
		events, results, settled := make(chan api.StreamEvent, 16), make(chan api.Result, 1), make(chan float64, 1)
		done = make(chan struct{})
		finished := done
		err := pool.Submit(Task{
			Job: Job{Version: "v1", Device: "d1", Model: "words", Received: time.Now(),
				Request: api.Request{ID: id, Input: json.RawMessage(input), Stream: stream}},
			Result: func(r api.Result) { results <- r },
			Event:  func(ev api.StreamEvent) { events <- ev },
			Settle: func(share float64) { settled <- share },
			Done:   func() { close(finished) },
		})
		if err != nil {
			t.Fatal(err)
		}
		return events, results, settled
	}

	events, _, settled := run("s1", `{"text":"one two three"}`, true)
	for seq, want := range []string{"one", "two", "three"} {
		ev := <-events
		if ev.Event != api.EventDelta || ev.Seq != seq || ev.ID != "s1" || !strings.Contains(string(ev.Delta), want) {
			t.Fatalf("event %d: %+v", seq, ev)
		}
	}
	if ev := <-events; ev.Event != api.EventDone || ev.Seq != 3 || ev.Status != 200 || string(ev.Usage) != `{"words":3}` {
		t.Fatalf("final %+v (usage %s)", ev, ev.Usage)
	}
	if share := <-settled; share != 0.3 {
		t.Errorf("settled a share of %v, want 0.3", share)
	}

	// Not asking for a stream gets one result.
	_, results, _ := run("s2", `{"text":"a b"}`, false)
	if r := <-results; r.Status != 200 || string(r.Output) != `{"words":2}` {
		t.Errorf("result %+v", r)
	}

	// A device cancels a running stream: it ends with one 499 error event.
	events, _, _ = run("s3", `{"text":"x y z","wait":true}`, true)
	if ev := <-events; ev.Event != api.EventDelta {
		t.Fatalf("first event %+v", ev)
	}
	if !pool.Cancel("d1", "s3") {
		t.Fatal("Cancel found no running request")
	}
	ev := <-events
	if ev.Event != api.EventError || ev.Status != 499 || ev.Error.Type != api.Canceled || ev.Seq != 1 {
		t.Fatalf("after cancel: %+v", ev)
	}
	<-done
	if pool.Cancel("d1", "s3") || pool.Cancel("d1", "nope") {
		t.Error("Cancel of a finished or unknown request reported true")
	}
}

// orderModel records the order in which it sees each device's inputs.
type orderModel struct {
	mu   sync.Mutex
	seen map[string][]int
}

func (m *orderModel) Info() inference.Info {
	return inference.Info{Name: "order", Version: "1", Cost: 1}
}

func (m *orderModel) Infer(ctx context.Context, req inference.Request) (any, error) {
	var n int
	if err := json.Unmarshal(req.Input, &n); err != nil {
		return nil, inference.InvalidInput("input: want an integer")
	}
	m.mu.Lock()
	m.seen[req.Device] = append(m.seen[req.Device], n)
	m.mu.Unlock()
	return n, nil
}

// TestPoolKeepsEachDevicesOrder: many workers, yet each device's requests
// for a model run in the order they were submitted (stateful models depend
// on it), while different devices run in parallel.
func TestPoolKeepsEachDevicesOrder(t *testing.T) {
	m := &orderModel{seen: map[string][]int{}}
	pool := NewPool(&Core{Models: coreTestRegistry(t, m), DefaultDeadline: time.Minute}, 4, 1000)
	pool.Start(nil)
	var wg sync.WaitGroup
	devices := []string{"a", "b", "c"}
	const n = 100
	for i := range n {
		for _, d := range devices {
			wg.Add(1)
			err := pool.Submit(Task{
				Job:  Job{Version: "v1", Device: d, Model: "order", Received: time.Now(), Request: api.Request{ID: fmt.Sprint(d, i), Input: json.RawMessage(fmt.Sprint(i))}},
				Done: wg.Done,
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	if err := pool.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		got := m.seen[d]
		if len(got) != n {
			t.Fatalf("device %s: %d requests ran, want %d", d, len(got), n)
		}
		for i, v := range got {
			if v != i {
				t.Fatalf("device %s: request %d ran in position %d", d, v, i)
			}
		}
	}
	if pool.QueueDepth() != 0 {
		t.Errorf("queue depth %d after drain", pool.QueueDepth())
	}
}
