package vad

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// initErr is why the runtime could not be initialised, nil when it was.
var initErr error

func TestMain(m *testing.M) {
	lib, err := onnx.Library(modelsDir())
	if err == nil {
		err = onnx.Init(lib)
	}
	initErr = err
	goleak.VerifyTestMain(m)
}

// modelsDir is where `make models` puts the runtime and the model files.
func modelsDir() string {
	if d := os.Getenv("MQTTINFER_MODELS_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", ".cache", "models")
}

// required reports whether missing test data must fail rather than skip.
func required() bool {
	return os.Getenv("MQTTINFER_REQUIRE_TESTDATA") != "" && runtime.GOOS == "linux"
}

// newModel loads the model with cfg (Dir defaults to modelsDir), skipping the
// test when the runtime or the model file is missing, unless test data is
// required.
func newModel(tb testing.TB, cfg Config) *Model {
	tb.Helper()
	if initErr != nil {
		if errors.Is(initErr, onnx.ErrUnavailable) && !required() {
			tb.Skip(initErr)
		}
		tb.Fatal(initErr)
	}
	if cfg.Dir == "" {
		cfg.Dir = modelsDir()
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, FileName)); err != nil && !required() {
		tb.Skip(err)
	}
	m, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Error(err)
		}
	})
	return m
}

// pcmInput is the input JSON carrying samples as pcm16.
func pcmInput(samples []int16, extra string) json.RawMessage {
	b := make([]byte, 2*len(samples))
	for i, s := range samples {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(s))
	}
	return json.RawMessage(`{"pcm16":"` + base64.StdEncoding.EncodeToString(b) + `"` + extra + `}`)
}

// run sends samples as pcm16 for device and returns the Result.
func run(tb testing.TB, m *Model, device string, samples []int16, params string) Result {
	tb.Helper()
	var p json.RawMessage
	if params != "" {
		p = json.RawMessage(params)
	}
	out, err := m.Infer(context.Background(), inference.Request{Device: device, Input: pcmInput(samples, ""), Params: p})
	if err != nil {
		tb.Fatalf("Infer(%d samples): %v", len(samples), err)
	}
	r, ok := out.(Result)
	if !ok {
		tb.Fatalf("Infer returned %T, want Result", out)
	}
	return r
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func mustJSON(tb testing.TB, v any) json.RawMessage {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
