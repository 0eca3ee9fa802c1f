package onnx

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// modelsDir is where `make models` puts the runtime and the model files.
func modelsDir() string {
	if d := os.Getenv("MQTTINFER_MODELS_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", ".cache", "models")
}

// TestRunSilero loads the real Silero VAD v5 model and runs one frame of
// silence and one of a loud tone through it.
func TestRunSilero(t *testing.T) {
	lib, err := Library(modelsDir())
	if err != nil {
		if os.Getenv("MQTTINFER_REQUIRE_TESTDATA") != "" && runtime.GOOS == "linux" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err := Init(lib); err != nil {
		if errors.Is(err, ErrUnavailable) && os.Getenv("MQTTINFER_REQUIRE_TESTDATA") == "" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	if Version() == "" {
		t.Error("no version")
	}
	s, err := Load(filepath.Join(modelsDir(), "silero_vad_v5.onnx"), []string{"input", "state", "sr"}, []string{"output", "stateN"}, SessionOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	run := func(frame []float32) float32 {
		out, err := s.Run([]Tensor{Float32(frame, 1, 576), Float32(make([]float32, 256), 2, 1, 128), Int64([]int64{16000}, 1)})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 2 || len(out[0].F32) != 1 || len(out[1].F32) != 256 {
			t.Fatalf("outputs %+v", out)
		}
		return out[0].F32[0]
	}
	silence := make([]float32, 576)
	tone := make([]float32, 576)
	for i := range tone {
		tone[i] = float32(0.5 * math.Sin(2*math.Pi*440*float64(i)/16000))
	}
	ps, pt := run(silence), run(tone)
	if ps < 0 || ps > 1 || pt < 0 || pt > 1 {
		t.Errorf("probabilities out of range: silence %v tone %v", ps, pt)
	}
	if ps > 0.5 {
		t.Errorf("silence has speech probability %v", ps)
	}
	if _, err := s.Run([]Tensor{Float32(silence, 1, 100)}); err == nil {
		t.Error("wrong input count accepted")
	}
	if _, err := s.Run([]Tensor{Float32(silence, 1, 100), Float32(nil, 2, 1, 128), Int64([]int64{16000}, 1)}); err == nil {
		t.Error("shape/data mismatch accepted")
	}
}
