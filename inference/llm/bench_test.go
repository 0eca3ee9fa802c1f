package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// streamBody renders an OpenAI-style stream of n one-token deltas, one
// event per slice element, usage and [DONE] included.
func streamBody(n int) [][]byte {
	var evs [][]byte
	add := func(v any) {
		b, _ := json.Marshal(v)
		evs = append(evs, append(append([]byte("data: "), b...), '\n', '\n'))
	}
	type choice struct {
		Index        int               `json:"index"`
		Delta        map[string]string `json:"delta"`
		FinishReason *string           `json:"finish_reason"`
	}
	type chunk struct {
		ID      string   `json:"id"`
		Object  string   `json:"object"`
		Created int      `json:"created"`
		Model   string   `json:"model"`
		Choices []choice `json:"choices"`
		Usage   *Usage   `json:"usage"`
	}
	c := chunk{ID: "chatcmpl-bench", Object: "chat.completion.chunk", Created: 1732590000, Model: "bench"}
	c.Choices = []choice{{Delta: map[string]string{"role": "assistant", "content": ""}}}
	add(c)
	for i := range n {
		c.Choices = []choice{{Delta: map[string]string{"content": " tok" + strconv.Itoa(i)}}}
		add(c)
	}
	stop := "stop"
	c.Choices = []choice{{Delta: map[string]string{}, FinishReason: &stop}}
	add(c)
	c.Choices, c.Usage = []choice{}, &Usage{PromptTokens: 12, CompletionTokens: n, TotalTokens: 12 + n}
	add(c)
	return append(evs, []byte("data: [DONE]\n\n"))
}

// BenchmarkStream is one streamed request of 100 deltas against a local
// server that writes and flushes each event on its own, as LLM servers
// do. It reports the time to the first delta and the time per delta after
// it: the client's overhead (HTTP, SSE parsing, JSON decoding, emit) over
// loopback, with a server that has every token ready.
func BenchmarkStream(b *testing.B) {
	const n = 100
	evs := streamBody(n)
	srv := newBackend(b, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for _, ev := range evs {
			if _, err := w.Write(ev); err != nil {
				return
			}
			_ = rc.Flush()
		}
	})
	m := newModel(b, srv.URL, nil)
	req := request(`{"prompt":"Why is the sky blue?"}`)
	var first, rest time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		var t0, tn time.Time
		k := 0
		_, err := m.InferStream(context.Background(), req, func(any) error {
			tn = time.Now()
			if k == 0 {
				t0 = tn
			}
			k++
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if k != n {
			b.Fatalf("%d deltas, want %d", k, n)
		}
		first += t0.Sub(start)
		rest += tn.Sub(t0)
	}
	b.ReportMetric(float64(first.Nanoseconds())/float64(b.N), "ns/first-delta")
	b.ReportMetric(float64(rest.Nanoseconds())/float64(b.N*(n-1)), "ns/delta")
}

// BenchmarkSSEReader is the event parser alone on the OpenAI fixture from
// memory: ns/event and allocations per event.
func BenchmarkSSEReader(b *testing.B) {
	data := bytes.Repeat(fixture(b, "openai.sse"), 20)
	events := 0
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		s := NewSSEReader(bytes.NewReader(data))
		for {
			if _, err := s.Next(); err != nil {
				break
			}
			events++
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}
