package detect

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
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
	goleak.VerifyTestMain(closeShared{m})
}

// closeShared runs the tests, then closes the shared model before goleak
// looks for goroutines left over.
type closeShared struct{ m *testing.M }

func (c closeShared) Run() int {
	code := c.m.Run()
	if sharedModel != nil {
		sharedModel.Close()
	}
	return code
}

var (
	sharedOnce  sync.Once
	sharedModel *Model
	sharedErr   error
)

// shared is one model with the default Config for the tests that need
// nothing else, loaded once (a load takes seconds: it warms up at batch 8).
func shared(tb testing.TB) *Model {
	tb.Helper()
	skipWithoutModel(tb, modelsDir())
	sharedOnce.Do(func() { sharedModel, sharedErr = New(Config{Dir: modelsDir()}) })
	if sharedErr != nil {
		tb.Fatal(sharedErr)
	}
	return sharedModel
}

// skipWithoutModel skips the test when the runtime or the model file in
// dir is missing, unless test data is required; then it fails.
func skipWithoutModel(tb testing.TB, dir string) {
	tb.Helper()
	if initErr != nil {
		if errors.Is(initErr, onnx.ErrUnavailable) && !required() {
			tb.Skip(initErr)
		}
		tb.Fatal(initErr)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		if !required() {
			tb.Skip(err, "(make models converts it)")
		}
		tb.Fatal(err)
	}
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

// newModel loads the model with cfg (Dir defaults to modelsDir), skipping
// the test when the runtime or the model file is missing, unless test data
// is required.
func newModel(tb testing.TB, cfg Config) *Model {
	tb.Helper()
	if cfg.Dir == "" {
		cfg.Dir = modelsDir()
	}
	skipWithoutModel(tb, cfg.Dir)
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

// photo reads one of the darknet sample photos, skipping when darknet's
// data is not installed unless test data is required.
func photo(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("/usr/share/darknet/data", name))
	if err != nil {
		if !required() {
			tb.Skip(err, "(scripts/testdeps.sh installs darknet)")
		}
		tb.Fatal(err)
	}
	return b
}

// imageInput is the input JSON for image bytes.
func imageInput(b []byte) json.RawMessage {
	return json.RawMessage(`{"image":"` + base64.StdEncoding.EncodeToString(b) + `"}`)
}

// detect runs image bytes through m with params and returns the Output.
func detect(tb testing.TB, m *Model, img []byte, params string) Output {
	tb.Helper()
	var p json.RawMessage
	if params != "" {
		p = json.RawMessage(params)
	}
	out, err := m.Infer(context.Background(), inference.Request{Device: "cam", Input: imageInput(img), Params: p})
	if err != nil {
		tb.Fatalf("Infer: %v", err)
	}
	o, ok := out.(Output)
	if !ok {
		tb.Fatalf("Infer returned %T, want Output", out)
	}
	return o
}
