package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
	"github.com/mqttinfer/mqttinfer/topics"
)

// chatBackend is a local OpenAI-compatible server that streams the words of
// answer as Chat Completions chunks, the way Ollama's /v1 does (a usage
// chunk, then data: [DONE]). With hold set, it stops after the first word
// until the client goes away, and reports that on gone. With next set, it
// waits for a value on next after the first word, as a real model takes
// milliseconds to decode each token: a benchmark of the first token then
// does not also carry the rest of the answer arriving at once.
type chatBackend struct {
	answer string
	hold   bool
	next   chan struct{}
	gone   chan struct{}
	seen   chan map[string]any // the request bodies
}

func (b *chatBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	if b.seen != nil {
		b.seen <- body
	}
	if r.URL.Path != "/v1/chat/completions" {
		http.Error(w, `{"error":{"message":"not found"}}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	chunk := func(delta, finish string) {
		fin := "null"
		if finish != "" {
			fin = `"` + finish + `"`
		}
		fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"tiny\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":%q},\"finish_reason\":%s}]}\n\n", delta, fin)
		fl.Flush()
	}
	words := strings.Fields(b.answer)
	for i, word := range words {
		if i > 0 {
			word = " " + word
		}
		chunk(word, "")
		if i == 0 && b.next != nil {
			select {
			case <-b.next:
			case <-r.Context().Done():
				return
			}
		}
		if b.hold {
			<-r.Context().Done()
			close(b.gone)
			return
		}
	}
	chunk("", "stop")
	fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"tiny\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", len(words), 9+len(words))
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

func startChatService(t *testing.T, b *chatBackend) (*chatBackend, string, string) {
	t.Helper()
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	cfg.Models.Chat.BaseURL = srv.URL + "/v1"
	cfg.Models.Chat.Model = "tiny"
	cfg.Throttle.Rate = 0.01 // no refill worth counting during a test: only settlement gives tokens back
	svc := startService(t, cfg)
	return b, svc.MQTTAddr(), svc.HTTPAddr()
}

// TestChatStreamsOverMQTT: `mqttinfer chat` (devicesim.Chat) asks over MQTT
// and prints the deltas in order; the raw events carry seq and end with
// exactly one done event with usage; the device's bucket is charged the
// cost up front and given back the unused share.
func TestChatStreamsOverMQTT(t *testing.T) {
	b, addr, httpAddr := startChatService(t, &chatBackend{answer: "Blue light scatters more than red light.", seen: make(chan map[string]any, 4)})

	var out, usage bytes.Buffer
	err := devicesim.Chat(context.Background(), devicesim.ChatOptions{Broker: addr, Device: "asker", Usage: &usage}, "Why is the sky blue?", &out)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "Blue light scatters more than red light.\n" {
		t.Errorf("printed %q", got)
	}
	if !strings.Contains(usage.String(), `"completion_tokens":7`) {
		t.Errorf("usage %q", usage.String())
	}
	req := <-b.seen
	if req["stream"] != true || req["model"] != "tiny" {
		t.Errorf("backend got %v", req)
	}

	// The raw stream on MQTT, as a device sees it.
	d := newDevice(t, addr, "mqttinfer", "raw-asker")
	d.request("chat", map[string]any{"id": "s1", "stream": true, "input": map[string]any{"prompt": "again"}})
	for seq := 0; ; seq++ {
		ev := d.event()
		if ev.ID != "s1" || ev.Seq != seq {
			t.Fatalf("event %d: %+v", seq, ev)
		}
		if ev.Event == api.EventDelta {
			continue
		}
		if ev.Event != api.EventDone || ev.Status != 200 || len(ev.Usage) == 0 || ev.RateLimit == nil {
			t.Fatalf("final event %+v", ev)
		}
		if seq != 7 { // 7 words, then done
			t.Errorf("done at seq %d, want 7", seq)
		}
		break
	}
	if got := metricValue(t, httpAddr, `mqttinfer_requests_total{model="chat",status="200",version="v1"}`); got != 2 {
		t.Errorf("chat requests %v, want 2", got)
	}
	// Each request is charged 8 of the bucket's 10 tokens up front; using 7
	// of 512 completion tokens, it keeps 1 and gives 7 back: 10 → 2 → 9,
	// then 9 → 1. Without settlement this second request would be refused.
	d.request("chat", map[string]any{"id": "s2", "input": map[string]any{"prompt": "third"}})
	if r := d.replyStatus(200); r.RateLimit == nil || r.RateLimit.Remaining != 1 {
		t.Errorf("second request: ratelimit %+v, want 1 remaining after its 8", r.RateLimit)
	}
}

// event waits for the next message and decodes it as a stream event.
func (d *device) event() api.StreamEvent {
	d.t.Helper()
	select {
	case m := <-d.msgs:
		var ev api.StreamEvent
		if err := json.Unmarshal(m.Payload(), &ev); err != nil {
			d.t.Fatalf("event %s: %v", m.Payload(), err)
		}
		return ev
	case <-time.After(wait):
		d.t.Fatalf("device %s: no event within %s", d.id, wait)
		return api.StreamEvent{}
	}
}

// TestChatCancel: a device cancels a running stream; the backend call is
// stopped and the stream ends with one 499 error event.
func TestChatCancel(t *testing.T) {
	b, addr, _ := startChatService(t, &chatBackend{answer: "one two three", hold: true, gone: make(chan struct{}), seen: make(chan map[string]any, 4)})
	d := newDevice(t, addr, "mqttinfer", "canceler")
	d.request("chat", map[string]any{"id": "long", "stream": true, "input": map[string]any{"prompt": "talk"}})
	if ev := d.event(); ev.Event != api.EventDelta || ev.Seq != 0 {
		t.Fatalf("first event %+v", ev)
	}
	d.publish(topics.Request("mqttinfer", "v1", "canceler", "chat"), []byte(`{"id":"long","cancel":true}`))
	<-b.gone // the backend saw its request end: the model was stopped
	if ev := d.event(); ev.Event != api.EventError || ev.Status != 499 || ev.Error.Type != api.Canceled || ev.Seq != 1 {
		t.Errorf("after cancel: %+v", ev)
	}
	// A cancel for nothing running is a clear 400.
	d.publish(topics.Request("mqttinfer", "v1", "canceler", "chat"), []byte(`{"id":"nothing","cancel":true}`))
	if r := d.replyStatus(400); r.ID != "nothing" {
		t.Errorf("cancel of nothing: %+v", r)
	}
}
