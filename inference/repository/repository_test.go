package repository

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// need skips (or, under make test, fails) a test whose runtime or tools
// are missing.
func need(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("MQTTINFER_REQUIRE_TESTDATA") != "" {
		t.Fatal(err)
	}
	t.Skip(err)
}

var (
	graphsOnce sync.Once
	graphsDir  string
	graphsErr  error
)

// graphs makes the test graphs (testdata/graphs.py, with Debian's
// python3-onnx) once, and starts ONNX Runtime.
func graphs(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MQTTINFER_MODELS_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", ".cache", "models")
	}
	lib, err := onnx.Library(dir)
	need(t, err)
	need(t, onnx.Init(lib))
	graphsOnce.Do(func() {
		graphsDir, graphsErr = os.MkdirTemp("", "mqttinfer-graphs-")
		if graphsErr != nil {
			return
		}
		out, err := exec.Command("/usr/bin/python3", "testdata/graphs.py", graphsDir).CombinedOutput()
		if err != nil {
			graphsErr = fmt.Errorf("testdata/graphs.py (apt-get install python3-onnx python3-numpy; make test does): %v: %s", err, out)
		}
	})
	need(t, graphsErr)
	return graphsDir
}

// layout writes a repository: files by path (a path ending in .onnx whose
// content names a graph, "graph:affine2", gets that graph).
func layout(t *testing.T, files map[string]string) string {
	t.Helper()
	g := graphs(t)
	dir := t.TempDir()
	for path, content := range files {
		write(t, g, filepath.Join(dir, path), content)
	}
	return dir
}

func write(t *testing.T, graphs, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	b := []byte(content)
	if name, ok := strings.CutPrefix(content, "graph:"); ok {
		var err error
		if b, err = os.ReadFile(filepath.Join(graphs, name+".onnx")); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

const affineYAML = `
description: y = ax + 1
inputs:  [{name: x, dtype: float32, shape: [-1, 4]}]
outputs: [{name: y, dtype: float32, shape: [-1, 4]}]
`

func open(t *testing.T, dir string) (*Repository, *inference.Registry) {
	t.Helper()
	reg := &inference.Registry{}
	r, err := Open(Options{Dir: dir, Registry: reg, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, reg
}

// infer runs one request through the registry as the worker's core does.
func infer(t *testing.T, reg *inference.Registry, model, device, pinned, input string) (Output, string, error) {
	t.Helper()
	m, ok := reg.Get(model)
	if !ok {
		t.Fatalf("model %q not registered", model)
	}
	vm, release, err := m.(inference.Versioned).Acquire(device, pinned)
	if err != nil {
		return Output{}, "", err
	}
	defer release()
	out, err := vm.Infer(context.Background(), inference.Request{Device: device, Input: json.RawMessage(input)})
	if err != nil {
		return Output{}, vm.Info().Version, err
	}
	b, _ := json.Marshal(out)
	var o Output
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return o, vm.Info().Version, nil
}

func floatsOf(t *testing.T, v any) []float64 {
	t.Helper()
	xs, ok := v.([]any)
	if !ok {
		t.Fatalf("data %v", v)
	}
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x.(float64)
	}
	return out
}

func TestTensorInTensorOut(t *testing.T) {
	dir := layout(t, map[string]string{
		"affine/model.yaml":      affineYAML,
		"affine/1/model.onnx":    "graph:affine2",
		"increment/model.yaml":   "inputs: [{name: x, dtype: int64, shape: [-1]}]\noutputs: [{name: y, dtype: int64, shape: [-1]}]\n",
		"increment/1/model.onnx": "graph:increment",
	})
	_, reg := open(t, dir)
	x := []float32{0, 1, -2.5, 1e6, 3, 4, 5, 6}
	in := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":%s}]}`, mustJSON(x))
	out, ver, err := infer(t, reg, "affine", "d1", "", in)
	if err != nil || ver != "1" {
		t.Fatal(ver, err)
	}
	y := out.Outputs[0]
	if y.Name != "y" || y.Datatype != "FP32" || fmt.Sprint(y.Shape) != "[2 4]" {
		t.Fatalf("output %+v", y)
	}
	for i, v := range floatsOf(t, y.Data) {
		if want := float64(2*x[i] + 1); v != want {
			t.Errorf("y[%d] = %v, want %v", i, v, want)
		}
	}
	// The same tensor as base64 little-endian bytes (what a CBOR byte string becomes).
	raw := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	out2, _, err := infer(t, reg, "affine", "d1", "", fmt.Sprintf(`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":%q}]}`, base64.StdEncoding.EncodeToString(raw)))
	if err != nil || fmt.Sprint(out2.Outputs[0].Data) != fmt.Sprint(y.Data) {
		t.Errorf("base64 input: %+v, %v", out2, err)
	}
	out3, _, err := infer(t, reg, "increment", "d1", "", `{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","data":[1,-1,9007199254740993]}]}`)
	if err != nil || fmt.Sprint(out3.Outputs[0].Data) != "[2 0 9.007199254740994e+15]" {
		t.Errorf("int64: %+v, %v", out3, err)
	}
}

func TestClassifierTopK(t *testing.T) {
	dir := layout(t, map[string]string{
		"fault/model.yaml": `
description: a vibration-fault classifier
license: MIT
inputs:  [{name: x, dtype: float32, shape: [-1, 3]}]
outputs: [{name: logits, dtype: float32, shape: [-1, 4]}]
labels: labels.txt
postprocess: {activation: softmax, top_k: 2}
`,
		"fault/labels.txt":   "normal\nimbalance\nmisalignment\nbearing\n",
		"fault/1/model.onnx": "graph:classifier",
	})
	_, reg := open(t, dir)
	out, _, err := infer(t, reg, "fault", "d1", "", `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	// logits = x W + b = [1.1, 2.2, 3.3, 1.4]; softmax; best: misalignment, imbalance.
	logits := []float64{1.1, 2.2, 3.3, 0.4 + 2 - 2 + 1.5}
	sum := 0.0
	for _, l := range logits {
		sum += math.Exp(l)
	}
	if len(out.TopK) != 1 || len(out.TopK[0]) != 2 {
		t.Fatalf("top_k %+v", out.TopK)
	}
	for i, want := range []struct {
		index int
		label string
	}{{2, "misalignment"}, {1, "imbalance"}} {
		c := out.TopK[0][i]
		p := math.Exp(logits[want.index]) / sum
		if c.Index != want.index || c.Label != want.label || math.Abs(float64(c.Score)-p) > 1e-6 {
			t.Errorf("top %d: %+v, want %d %s %.6f", i, c, want.index, want.label, p)
		}
	}
	info, _ := reg.Get("fault")
	if i := info.Info(); i.Version != "1" || i.License != "MIT" || !strings.Contains(string(i.Output), "top_k") || i.Versions[0].State != "serving" {
		t.Errorf("catalog entry %+v", i)
	}
}

func TestBadInputs(t *testing.T) {
	dir := layout(t, map[string]string{"affine/model.yaml": affineYAML, "affine/1/model.onnx": "graph:affine2"})
	_, reg := open(t, dir)
	for _, c := range []struct{ input, want string }{
		{`{"x": 1}`, `want {"inputs"`},
		{`{"inputs":[{"name":"z","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, `input tensor "x" is missing; the model takes x (FP32 [-1,4])`},
		{`{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}`, `input tensor "x": datatype "INT64", the model takes FP32`},
		{`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, `input tensor "x": shape [1 3], the model takes [-1,4]`},
		{`{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","data":[1,2,3,4]}]}`, `shape [4], the model takes [-1,4]`},
		{`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}`, `4 elements of data, shape [2 4] takes 8`},
		{`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":"AAAA"}]}`, `3 bytes of data, shape [1 4] of FP32 takes 16`},
		{`{"inputs":[{"name":"x","shape":[0,4],"datatype":"FP32","data":[]}]}`, `shape [0 4]`},
		{`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, `given twice`},
		{`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"w","shape":[1],"datatype":"FP32","data":[1]}]}`, `"w" is not one of the model's`},
	} {
		_, _, err := infer(t, reg, "affine", "d1", "", c.input)
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an invalid input with %q", c.input, err, c.want)
		}
	}
}

// TestRefusals: a corrupt file, a truncated one, and declared shapes that
// lie are refused with a message that says why; the other models serve.
func TestRefusals(t *testing.T) {
	g := graphs(t)
	whole, err := os.ReadFile(filepath.Join(g, "affine2.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	dir := layout(t, map[string]string{
		"good/model.yaml":        affineYAML,
		"good/1/model.onnx":      "graph:affine2",
		"corrupt/model.yaml":     affineYAML,
		"corrupt/1/model.onnx":   "this is not an ONNX file at all",
		"truncated/model.yaml":   affineYAML,
		"truncated/1/model.onnx": string(whole[:len(whole)/2]),
		"liar/model.yaml":        strings.Replace(affineYAML, "[-1, 4]}]\noutputs", "[-1, 5]}]\noutputs", 1),
		"liar/1/model.onnx":      "graph:affine2",
		"typo/model.yaml":        "inputs: [{name: x, dtype: float16, shape: [-1, 4]}]\noutputs: []\nsurprise: 1\n",
	})
	_, reg := open(t, dir)
	if _, _, err := infer(t, reg, "good", "d", "", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`); err != nil {
		t.Fatalf("the good model does not serve: %v", err)
	}
	for name, want := range map[string]string{
		"corrupt":   "1/model.onnx",
		"truncated": "1/model.onnx",
		"liar":      `declared inputs x (FP32 [-1,5]) do not match the graph's [x (float32 [-1,4])]`,
		"typo":      "surprise",
	} {
		m, ok := reg.Get(name)
		if !ok {
			t.Errorf("%s: not in the catalog", name)
			continue
		}
		info := m.Info()
		why := info.Unavailable
		for _, v := range info.Versions {
			why += " " + v.Error
		}
		if info.Unavailable == "" || !strings.Contains(why, want) {
			t.Errorf("%s: unavailable %q, versions %+v; want a refusal naming %q", name, info.Unavailable, info.Versions, want)
		}
	}
}

func TestVersionsAndCanary(t *testing.T) {
	dir := layout(t, map[string]string{
		"affine/model.yaml":   affineYAML,
		"affine/1/model.onnx": "graph:affine2",
		"affine/2/model.onnx": "graph:affine3",
	})
	r, reg := open(t, dir)
	one := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,1,1,1]}]}`
	check := func(pinned, wantVersion string, wantY float64) {
		t.Helper()
		out, ver, err := infer(t, reg, "affine", "d1", pinned, one)
		if err != nil || ver != wantVersion || floatsOf(t, out.Outputs[0].Data)[0] != wantY {
			t.Fatalf("pinned %q: version %s, %+v, %v; want version %s computing %v", pinned, ver, out, err, wantVersion, wantY)
		}
	}
	check("", "2", 4) // latest
	check("1", "1", 3)
	var ve *inference.VersionError
	if _, _, err := infer(t, reg, "affine", "d1", "9", one); !errors.As(err, &ve) || fmt.Sprint(ve.Versions) != "[1 2]" {
		t.Fatalf("pinned 9: %v", err)
	}

	// A 10 % canary on version 2: one version per device, 10 % ± 3 % of devices.
	write(t, "", filepath.Join(dir, "affine/model.yaml"), affineYAML+"version_policy: {canary: {\"1\": 90, \"2\": 10}}\n")
	if !r.Scan() {
		t.Fatal("the new policy changed nothing")
	}
	m, _ := reg.Get("affine")
	on2 := 0
	const devices = 2000
	for i := range devices {
		d := fmt.Sprintf("dev-%d", i)
		v1, rel, err := m.(inference.Versioned).Acquire(d, "")
		if err != nil {
			t.Fatal(err)
		}
		rel()
		v2, rel, _ := m.(inference.Versioned).Acquire(d, "")
		rel()
		if v1.Info().Version != v2.Info().Version {
			t.Fatalf("device %s moved between versions", d)
		}
		if v1.Info().Version == "2" {
			on2++
		}
	}
	if share := float64(on2) / devices; share < 0.07 || share > 0.13 {
		t.Errorf("canary share %.3f, want 0.10 ± 0.03", share)
	}
	if i := m.Info(); i.VersionPolicy != "canary 1:90 2:10" || i.Versions[1].SharePercent != 10 {
		t.Errorf("catalog: %s %+v", i.VersionPolicy, i.Versions)
	}
}

// TestReload: versions come, change and go with the disk; a version in
// use is freed only once its requests are over; a broken model.yaml
// changes nothing that serves.
func TestReload(t *testing.T) {
	g := graphs(t)
	dir := layout(t, map[string]string{"affine/model.yaml": affineYAML, "affine/1/model.onnx": "graph:affine2"})
	r, reg := open(t, dir)
	one := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,1,1,1]}]}`
	m, _ := reg.Get("affine")
	held, release, err := m.(inference.Versioned).Acquire("d1", "1") // a request of version 1 in flight
	if err != nil {
		t.Fatal(err)
	}

	write(t, g, filepath.Join(dir, "affine/2/model.onnx"), "graph:affine3")
	if !r.Scan() {
		t.Fatal("version 2 not picked up")
	}
	if _, ver, _ := infer(t, reg, "affine", "d1", "", one); ver != "2" {
		t.Fatalf("latest is %s after adding 2", ver)
	}
	// Version 1 is removed while its request runs: the request finishes on it.
	if err := os.RemoveAll(filepath.Join(dir, "affine/1")); err != nil {
		t.Fatal(err)
	}
	r.Scan()
	if _, _, err := infer(t, reg, "affine", "d1", "1", one); err == nil {
		t.Fatal("removed version 1 still takes requests")
	}
	out, err := held.Infer(context.Background(), inference.Request{Input: json.RawMessage(one)})
	if err != nil {
		t.Fatalf("the request in flight on version 1 failed: %v", err)
	}
	if y := out.(Output).Outputs[0].Data.(floats)[0]; y != 3 {
		t.Fatalf("version 1 computed %v", y)
	}
	release()

	// A broken model.yaml: version 2 goes on serving, the catalog says why.
	write(t, g, filepath.Join(dir, "affine/model.yaml"), "inputs: [oops\n")
	r.Scan()
	if _, ver, err := infer(t, reg, "affine", "d1", "", one); err != nil || ver != "2" {
		t.Fatalf("after a broken model.yaml: %s %v", ver, err)
	}
	if i := m.Info(); !strings.Contains(i.Versions[0].Error, "model.yaml") {
		t.Errorf("the catalog does not say the configuration is broken: %+v", i.Versions)
	}
	// Unload, load.
	if err := r.Unload("affine"); err != nil || reg.Has("affine") {
		t.Fatalf("unload: %v", err)
	}
	write(t, g, filepath.Join(dir, "affine/model.yaml"), affineYAML)
	if err := r.Load("affine"); err != nil || !reg.Has("affine") {
		t.Fatalf("load: %v", err)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
