package vad

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// benchAudio is 10 s of quiet white noise: the cost of a frame does not
// depend on what it holds.
func benchChunks(n, size int) []json.RawMessage {
	s := whiteNoise(n*size, 0.05, 9)
	out := make([]json.RawMessage, n)
	for i := range out {
		out[i] = pcmInput(s[i*size:(i+1)*size], "")
	}
	return out
}

// BenchmarkFrame is one 32 ms frame (512 samples of pcm16) per request on a
// warm stream, decoding included: the warm latency of a device that sends
// frame by frame.
func BenchmarkFrame(b *testing.B) {
	m := newModel(b, Config{})
	in := benchChunks(64, FrameSamples)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := m.Infer(ctx, inference.Request{Device: "d", Input: in[i%len(in)]}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkFrameModel is the model alone on one frame: no JSON, no stream table.
func BenchmarkFrameModel(b *testing.B) {
	m := newModel(b, Config{})
	frame := make([]float32, FrameSamples)
	for i, x := range whiteNoise(FrameSamples, 0.05, 9) {
		frame[i] = float32(x) / 32768
	}
	var st state
	l := DefaultParams.limits()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.process(ctx, &st, frame, &l); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSecond is one request of 1 s of audio (16,000 samples of pcm16,
// 31 frames and a carried partial frame) on a warm stream. It reports the
// real-time factor: seconds of audio per second of one core.
func BenchmarkSecond(b *testing.B) {
	m := newModel(b, Config{})
	in := benchChunks(8, SampleRate)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := m.Infer(ctx, inference.Request{Device: "d", Input: in[i%len(in)]}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "x_realtime")
}

// BenchmarkSecondSamples is BenchmarkSecond with the audio as JSON numbers
// (input.samples) instead of pcm16.
func BenchmarkSecondSamples(b *testing.B) {
	m := newModel(b, Config{})
	s := whiteNoise(SampleRate, 0.05, 9)
	var sb strings.Builder
	sb.WriteString(`{"samples":[`)
	for i, x := range s {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatFloat(float64(x)/32768, 'g', -1, 32))
	}
	sb.WriteString("]}")
	in := json.RawMessage(sb.String())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Infer(ctx, inference.Request{Device: "d", Input: in}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(in)), "bytes/request")
}

// BenchmarkParallel is one-frame requests from 1000 devices on every core
// (GOMAXPROCS goroutines, one session with one intra-op thread): the
// throughput at saturation. ns/op is wall time per frame across all cores.
func BenchmarkParallel(b *testing.B) {
	m := newModel(b, Config{})
	in := benchChunks(64, FrameSamples)
	const devices = 1000
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 7919
		for pb.Next() {
			if _, err := m.Infer(context.Background(), inference.Request{Device: "d" + strconv.Itoa(i%devices), Input: in[i%len(in)]}); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()*FrameMS/1000, "x_realtime")
}

// BenchmarkMemory reports the resident memory one loaded model adds (the
// ONNX Runtime session; the runtime library itself is loaded once per
// process, before) and the Go heap one tracked stream takes, in the worst
// case of a nearly full partial frame carried.
func BenchmarkMemory(b *testing.B) {
	newModel(b, Config{}) // skips without the runtime; the first session pays one-off runtime costs
	for b.Loop() {
		const models = 4
		runtime.GC()
		before := rss(b)
		ms := make([]*Model, models)
		for i := range ms {
			ms[i] = newModel(b, Config{})
		}
		runtime.GC()
		b.ReportMetric(float64(rss(b)-before)/models/(1<<20), "MB_rss/model")

		const streams = 2000
		m := ms[0]
		in := pcmInput(whiteNoise(FrameSamples+FrameSamples-1, 0.05, 3), "")
		var hb, ha runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&hb)
		for d := range streams {
			if _, err := m.Infer(context.Background(), inference.Request{Device: "device-" + strconv.Itoa(d), Input: in}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&ha)
		b.ReportMetric(float64(int64(ha.HeapAlloc)-int64(hb.HeapAlloc))/streams, "B_heap/stream")
		for _, m := range ms {
			m.Close()
		}
	}
}

// rss is the resident set size of this process in bytes, from /proc.
func rss(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Skip("no /proc/self/status:", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS in /proc/self/status")
	return 0
}
