package anomaly

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// BenchmarkInfer is one sample per request on a warmed-up series, input
// decoding included: ns/op is ns per sample.
func BenchmarkInfer(b *testing.B) {
	m := New(Config{})
	v := noise(1, 1024, 20, 1)
	stream(b, m, "d", v[:100], 100, "")
	inputs := make([]json.RawMessage, len(v))
	for i, x := range v {
		inputs[i] = json.RawMessage(`{"sensor":"temp","value":` + strconv.FormatFloat(x, 'g', -1, 64) + `}`)
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := m.Infer(ctx, inference.Request{Device: "d", Input: inputs[i%len(inputs)]}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkInferBatch is batches of 1000 samples; it reports ns per sample.
func BenchmarkInferBatch(b *testing.B) {
	m := New(Config{})
	v := noise(2, 1000, 20, 1)
	in, _ := json.Marshal(map[string]any{"sensor": "temp", "values": v})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Infer(ctx, inference.Request{Device: "d", Input: in}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(v)), "ns/sample")
}

// BenchmarkInferParallel is single samples from 1000 devices on all cores.
func BenchmarkInferParallel(b *testing.B) {
	m := New(Config{})
	const devices = 1000
	for d := range devices {
		stream(b, m, fmt.Sprint("d", d), noise(uint64(d), 30, 0, 1), 30, "")
	}
	in := json.RawMessage(`{"sensor":"temp","value":0.25}`)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.Infer(context.Background(), inference.Request{Device: "d" + strconv.Itoa(i%devices), Input: in}); err != nil {
				b.Error(err)
				return
			}
			i += 7
		}
	})
}

// BenchmarkSeriesMemory reports the heap each tracked series takes.
func BenchmarkSeriesMemory(b *testing.B) {
	const n = 20000
	in := json.RawMessage(`{"sensor":"temp","value":1}`)
	devs := make([]string, n)
	for i := range devs {
		devs[i] = "device-" + strconv.Itoa(i)
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := New(Config{})
		for _, d := range devs {
			if _, err := m.Infer(context.Background(), inference.Request{Device: d, Input: in}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/series")
		runtime.KeepAlive(m)
	}
}

// BenchmarkStep is the detector alone on one series, without JSON: ns/op
// is the core cost of a sample.
func BenchmarkStep(b *testing.B) {
	var s series
	v := noise(2, 1000, 20, 1)
	p := DefaultParams
	i := 0
	for b.Loop() {
		var out Result
		s.step(v[i%len(v)], &p, &out)
		i++
	}
}
