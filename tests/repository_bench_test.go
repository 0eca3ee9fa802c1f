package tests

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
	"github.com/mqttinfer/mqttinfer/inference/repository"
)

// BenchmarkTensorPath: one 32 ms frame of audio through Silero VAD three
// ways: the ONNX graph run directly (the floor), the built-in vad model
// (base64 pcm16 in, speech probability and segments out), and the same
// graph served from the model repository (Open Inference Protocol tensors
// in and out, as JSON). make bench prints the ratios.
func BenchmarkTensorPath(b *testing.B) {
	cfg := testConfig(b)
	withModels(&cfg)
	repo := b.TempDir()
	cfg.Models.Repository = repo
	silero := filepath.Join(cfg.Models.Dir, "silero_vad_v5.onnx")
	w, err := os.ReadFile(silero)
	if err != nil {
		b.Skip(err)
	}
	if err := os.MkdirAll(filepath.Join(repo, "silero", "1"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "silero", "1", "model.onnx"), w, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "silero", "model.yaml"), []byte(`inputs:
  - {name: input, dtype: float32, shape: [1, 576]}
  - {name: state, dtype: float32, shape: [2, 1, 128]}
  - {name: sr, dtype: int64, shape: []}
outputs:
  - {name: output, dtype: float32, shape: [1, 1]}
  - {name: stateN, dtype: float32, shape: [2, 1, 128]}
warmup: {sr: 16000}
`), 0o644); err != nil {
		b.Fatal(err)
	}
	svc := startService(b, cfg)
	frame := make([]float32, 576)
	pcm := make([]byte, 512*2)
	for i := range frame {
		frame[i] = float32(0.3 * math.Sin(2*math.Pi*200*float64(i)/16000))
		if i < 512 {
			v := int16(frame[i] * 32767)
			pcm[2*i], pcm[2*i+1] = byte(v), byte(v>>8)
		}
	}
	b.Run("graph", func(b *testing.B) {
		s, err := onnx.Load(silero, []string{"input", "state", "sr"}, []string{"output", "stateN"}, onnx.SessionOptions{Threads: 1})
		if err != nil {
			b.Skip(err)
		}
		defer s.Close()
		for b.Loop() {
			if _, err := s.Run([]onnx.Tensor{onnx.Float32(frame, 1, 576), onnx.Float32(make([]float32, 256), 2, 1, 128), onnx.Int64([]int64{16000}, 1)}); err != nil {
				b.Fatal(err)
			}
		}
	})
	run := func(b *testing.B, model string, input []byte) {
		m, ok := svc.Models().Get(model)
		if !ok || m.Info().Unavailable != "" {
			b.Skipf("%s unavailable", model)
		}
		for b.Loop() {
			if _, err := m.Infer(context.Background(), inference.Request{Device: "bench", Input: input}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("builtin", func(b *testing.B) {
		run(b, "vad", mustJSON(b, map[string]any{"pcm16": base64.StdEncoding.EncodeToString(pcm)}))
	})
	b.Run("repository", func(b *testing.B) {
		run(b, "silero", mustJSON(b, map[string]any{"inputs": []any{
			map[string]any{"name": "input", "shape": []int{1, 576}, "datatype": "FP32", "data": frame},
			map[string]any{"name": "state", "shape": []int{2, 1, 128}, "datatype": "FP32", "data": make([]float32, 256)},
			map[string]any{"name": "sr", "shape": []int{}, "datatype": "INT64", "data": []int64{16000}},
		}}))
	})
}

// BenchmarkRepositoryReload: what a new version costs. Each iteration
// writes version 2 of a model beside version 1 (NanoDet, 3.7 MB) and scans:
// ns/op is the time until version 2 serves (load, checks, warm-up
// inference, swap); MB-second is how much more the process holds while both
// versions are loaded, from its RSS.
func BenchmarkRepositoryReload(b *testing.B) {
	models := filepath.Join("..", ".cache", "models")
	lib, err := onnx.Library(models)
	if err != nil {
		b.Skip(err)
	}
	if err := onnx.Init(lib); err != nil {
		b.Skip(err)
	}
	weights := filepath.Join(models, "nanodet.onnx")
	in, out, err := onnx.Inspect(weights)
	if err != nil {
		b.Skip(err)
	}
	spec := func(ts []onnx.TensorInfo) string {
		var parts []string
		for _, t := range ts {
			dims := make([]string, len(t.Shape))
			for i, d := range t.Shape {
				dims[i] = strconv.FormatInt(d, 10)
			}
			parts = append(parts, fmt.Sprintf("{name: %q, dtype: %s, shape: [%s]}", t.Name, t.DType, strings.Join(dims, ", ")))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	repo := b.TempDir()
	w, err := os.ReadFile(weights)
	if err != nil {
		b.Fatal(err)
	}
	put := func(path string, data []byte) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	put(filepath.Join(repo, "det", "model.yaml"), []byte("inputs: "+spec(in)+"\noutputs: "+spec(out)+"\n"))
	put(filepath.Join(repo, "det", "1", "model.onnx"), w)
	reg := &inference.Registry{}
	r, err := repository.Open(repository.Options{Dir: repo, Registry: reg, Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	m, _ := reg.Get("det")
	if m.Info().Unavailable != "" {
		b.Fatalf("det: %s", m.Info().Unavailable)
	}
	var extra float64
	for b.Loop() {
		before := rss(b)
		put(filepath.Join(repo, "det", "2", "model.onnx"), w)
		r.Scan()
		if v := m.Info().Versions; len(v) != 2 || v[1].State != "serving" {
			b.Fatalf("version 2 not serving: %+v", v)
		}
		extra = max(extra, float64(rss(b)-before)/(1<<20))
		b.StopTimer()
		if err := os.RemoveAll(filepath.Join(repo, "det", "2")); err != nil {
			b.Fatal(err)
		}
		r.Scan()
		b.StartTimer()
	}
	b.ReportMetric(extra, "MB-second")
}

// rss is the process's resident memory, in bytes.
func rss(b *testing.B) int64 {
	b.Helper()
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skip(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
