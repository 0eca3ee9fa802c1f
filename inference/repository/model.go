package repository

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
	"github.com/mqttinfer/mqttinfer/topics"
)

// version is one loaded version of a repository model: its session and
// the config it was loaded with.
type version struct {
	name, version string
	cfg           *Config
	session       *onnx.Session
	checksum      string // of model.onnx, hex
	configSum     string // of model.yaml (and the labels), hex
	warm          time.Duration
	info          inference.Info

	mu      sync.Mutex
	refs    int // requests holding it
	closing bool
	idle    *sync.Cond
}

func (v *version) Info() inference.Info { return v.info }

// Infer runs one request: tensors in, tensors out (postprocessed).
func (v *version) Infer(ctx context.Context, req inference.Request) (any, error) {
	in, err := v.cfg.decode(req.Input)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return v.run(in)
}

func (v *version) run(in []onnx.Tensor) (Output, error) {
	out, err := v.session.Run(in)
	if err != nil {
		return Output{}, err
	}
	for i, s := range v.cfg.Outputs {
		if err := checkOutput(s, out[i]); err != nil {
			return Output{}, err
		}
	}
	return encodeOutputs(v.cfg, out)
}

// checkOutput checks an output against its declaration (the graph's
// shapes can depend on the input).
func checkOutput(s TensorSpec, t onnx.Tensor) error {
	if (s.DType == "float32") != (t.F32 != nil) && len(t.Shape) > 0 && t.Len() > 0 {
		return fmt.Errorf("output %q is not %s", s.Name, s.DType)
	}
	if len(t.Shape) != len(s.Shape) {
		return fmt.Errorf("output %q has shape %v, declared %s", s.Name, t.Shape, shapeString(s.Shape))
	}
	for i, d := range t.Shape {
		if s.Shape[i] > 0 && d != s.Shape[i] {
			return fmt.Errorf("output %q has shape %v, declared %s", s.Name, t.Shape, shapeString(s.Shape))
		}
	}
	return nil
}

// acquire takes a hold on v for one request; false once v is closing.
func (v *version) acquire() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closing {
		return false
	}
	v.refs++
	return true
}

func (v *version) release() {
	v.mu.Lock()
	if v.refs--; v.refs == 0 && v.closing {
		v.idle.Broadcast()
	}
	v.mu.Unlock()
}

// close waits for the requests holding v to finish, then frees its session.
func (v *version) close() {
	v.mu.Lock()
	v.closing = true
	for v.refs > 0 {
		v.idle.Wait()
	}
	v.mu.Unlock()
	_ = v.session.Close()
}

// model is a repository model: the versions it serves and the policy that
// picks one for a request. It is what the registry holds under its name.
type model struct {
	name string
	dir  string

	mu       sync.RWMutex
	cfg      *Config             // of the versions serving
	cfgSum   string              // its checksum
	versions map[string]*version // serving
	failed   map[string]string   // version → why it did not load
	info     inference.Info
}

var _ inference.Versioned = (*model)(nil)

func (m *model) Info() inference.Info {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.info
}

// Infer runs a request on the version the policy picks (the worker's core
// calls Acquire; this is for callers that do not).
func (m *model) Infer(ctx context.Context, req inference.Request) (any, error) {
	v, release, err := m.Acquire(req.Device, "")
	if err != nil {
		return nil, err
	}
	defer release()
	return v.Infer(ctx, req)
}

// Acquire picks the version for a request of device: pinned, or by the
// policy.
func (m *model) Acquire(device, pinned string) (inference.Model, func(), error) {
	for range 3 { // a version closing between the pick and the hold: pick again
		m.mu.RLock()
		var v *version
		if pinned != "" {
			v = m.versions[pinned]
			if v == nil {
				err := &inference.VersionError{Model: m.name, Version: pinned, Versions: m.serving()}
				m.mu.RUnlock()
				return nil, nil, err
			}
		} else {
			v = m.pick(device)
		}
		m.mu.RUnlock()
		if v == nil {
			return nil, nil, fmt.Errorf("no version of model %q loaded", m.name)
		}
		if v.acquire() {
			return v, v.release, nil
		}
	}
	return nil, nil, fmt.Errorf("model %q is being reloaded", m.name)
}

// serving lists the serving versions, sorted. Lock held.
func (m *model) serving() []string { return sortVersions(mapsKeys(m.versions)) }

// shares is what each serving version answers of the requests that pin
// none, in percent, under the policy. Lock held.
func (m *model) shares() map[string]float64 {
	out := map[string]float64{}
	p := m.cfg.VersionPolicy
	switch {
	case p.Canary != nil:
		total := 0
		for v, w := range p.Canary {
			if m.versions[v] != nil {
				total += w
			}
		}
		if total > 0 {
			for v, w := range p.Canary {
				if m.versions[v] != nil && w > 0 {
					out[v] = 100 * float64(w) / float64(total)
				}
			}
			return out
		}
	case p.Fixed != "" && m.versions[p.Fixed] != nil:
		out[p.Fixed] = 100
		return out
	}
	if l := latest(m.serving()); l != "" {
		out[l] = 100
	}
	return out
}

// latest is the highest version: the highest number when there are
// numbered versions, else the last name.
func latest(sorted []string) string {
	for i := len(sorted) - 1; i >= 0; i-- {
		if _, err := strconv.ParseUint(sorted[i], 10, 64); err == nil {
			return sorted[i]
		}
	}
	if len(sorted) > 0 {
		return sorted[len(sorted)-1]
	}
	return ""
}

// pick is the version the policy gives device: a canary splits devices by
// a stable hash of their id, so that a device keeps seeing one version.
// Lock held.
func (m *model) pick(device string) *version {
	shares := m.shares()
	if len(shares) == 1 {
		for v := range shares {
			return m.versions[v]
		}
	}
	if len(shares) == 0 {
		return nil
	}
	x := topics.Hash(m.name, device)
	point := float64(x>>11) / float64(1<<53) * 100 // uniform in [0, 100)
	acc := 0.0
	vs := sortVersions(mapsKeys(shares))
	for _, v := range vs {
		acc += shares[v]
		if point < acc {
			return m.versions[v]
		}
	}
	return m.versions[vs[len(vs)-1]]
}

// describe refreshes the model's catalog entry. Lock held.
func (m *model) describe() {
	info := inference.Info{
		Name:          m.name,
		Description:   m.cfg.Description,
		License:       m.cfg.License,
		Cost:          max(m.cfg.Cost, 1),
		Runtime:       "onnxruntime " + onnx.Version(),
		Input:         inputSchema(m.cfg),
		Output:        outputSchema(m.cfg),
		VersionPolicy: m.cfg.VersionPolicy.String(),
		Source:        "model repository " + m.dir,
	}
	if m.cfg.Source != "" {
		info.Source += " (" + m.cfg.Source + ")"
	}
	if info.Description == "" {
		info.Description = fmt.Sprintf("%s: a model of the repository; tensors in: %s; out: %s", m.name, describe(m.cfg.Inputs), describe(m.cfg.Outputs))
	}
	shares := m.shares()
	main, top := "", -1.0
	for _, v := range m.serving() {
		if shares[v] > top || shares[v] == top && compareVersions(v, main) > 0 {
			main, top = v, shares[v]
		}
	}
	info.Version = main
	if v := m.versions[main]; v != nil {
		info.Checksum = v.checksum
		info.WarmLatencyMS = float64(v.warm.Microseconds()) / 1000
	}
	names := m.serving()
	for v := range m.failed {
		if !slices.Contains(names, v) {
			names = append(names, v)
		}
	}
	for _, name := range sortVersions(names) {
		vi := inference.VersionInfo{Version: name, State: "serving", SharePercent: shares[name]}
		if v := m.versions[name]; v != nil {
			vi.Checksum, vi.WarmLatencyMS = v.checksum, float64(v.warm.Microseconds())/1000
		}
		if why, ok := m.failed[name]; ok {
			vi.Error = why
			if m.versions[name] == nil {
				vi.State = "failed"
			}
		}
		info.Versions = append(info.Versions, vi)
	}
	if len(m.versions) == 0 {
		info.Unavailable = "no version of the model loaded"
		if len(m.failed) > 0 {
			info.Unavailable += ": see versions"
		}
	}
	m.info = info
}

// inputSchema is the JSON Schema of a repository model's input.
func inputSchema(c *Config) json.RawMessage {
	desc := "Named tensors in the Open Inference Protocol (KServe v2) shape: data flat in row-major order, as numbers or as base64 little-endian bytes. The model takes " + describe(c.Inputs) + "."
	p := c.Preprocess
	if p == nil {
		return tensorsSchema("inputs", c.Inputs, desc)
	}
	var tensors map[string]any
	_ = json.Unmarshal(tensorsSchema("inputs", c.Inputs, desc), &tensors)
	s := p.input(c.Inputs)
	props := map[string]any{}
	var form map[string]any
	if im := p.Image; im != nil {
		props["image"] = map[string]any{"type": "string", "contentEncoding": "base64", "description": "A JPEG or PNG, base64 (raw bytes in CBOR on v2)."}
		form = map[string]any{"type": "object", "required": []string{"image"},
			"description": fmt.Sprintf("An image, made into input %q: resized (%s) to %dx%d, %s, %s.", s.Name, cmp(im.Resize, "stretch"), im.Width, im.Height, cmp(im.Channels, "RGB"), cmp(im.Layout, "NCHW"))}
	} else {
		props["pcm16"] = map[string]any{"type": "string", "contentEncoding": "base64", "description": "int16 little-endian mono samples, base64 (raw bytes in CBOR on v2)."}
		props["sample_rate"] = map[string]any{"const": p.Audio.SampleRate}
		form = map[string]any{"type": "object", "required": []string{"pcm16"},
			"description": fmt.Sprintf("Audio at %d Hz, made into input %q as samples in [-1, 1).", p.Audio.SampleRate, s.Name)}
	}
	if len(c.Inputs) > 1 {
		others := slices.DeleteFunc(slices.Clone(c.Inputs), func(o TensorSpec) bool { return o.Name == s.Name })
		props["inputs"] = tensorArraySchema(others)
		form["required"] = append(form["required"].([]string), "inputs")
	}
	form["properties"] = props
	form["additionalProperties"] = false
	b, _ := json.Marshal(map[string]any{"oneOf": []any{tensors, form}})
	return b
}

func outputSchema(c *Config) json.RawMessage {
	s := map[string]any{
		"type": "object", "required": []string{"outputs"},
		"description": "The model's output tensors: " + describe(c.Outputs) + ".",
		"properties": map[string]any{
			"outputs": tensorArraySchema(c.Outputs),
		},
	}
	if c.Postprocess != nil && c.Postprocess.TopK > 0 {
		s["properties"].(map[string]any)["top_k"] = map[string]any{
			"type":        "array",
			"description": fmt.Sprintf("For each row of %q, its %d best classes, best first.", c.postOutput().Name, c.Postprocess.TopK),
			"items": map[string]any{"type": "array", "items": map[string]any{
				"type": "object", "required": []string{"index", "score"},
				"properties": map[string]any{"index": map[string]any{"type": "integer"}, "label": map[string]any{"type": "string"}, "score": map[string]any{"type": "number"}},
			}},
		}
	}
	b, _ := json.Marshal(s)
	return b
}

func tensorsSchema(key string, specs []TensorSpec, desc string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"type": "object", "required": []string{key}, "description": desc,
		"properties": map[string]any{key: tensorArraySchema(specs)},
	})
	return b
}

func tensorArraySchema(specs []TensorSpec) map[string]any {
	var items []any
	for _, s := range specs {
		dims := make([]any, len(s.Shape))
		for i, d := range s.Shape {
			if d > 0 {
				dims[i] = map[string]any{"const": d}
			} else {
				dims[i] = map[string]any{"type": "integer", "minimum": 1}
			}
		}
		elem := map[string]any{"type": "number"}
		if s.DType == "int64" {
			elem = map[string]any{"type": "integer"}
		}
		items = append(items, map[string]any{
			"type": "object", "required": []string{"name", "shape", "datatype", "data"},
			"properties": map[string]any{
				"name":     map[string]any{"const": s.Name},
				"datatype": map[string]any{"const": dtypes[s.DType]},
				"shape":    map[string]any{"type": "array", "prefixItems": dims, "minItems": len(dims), "maxItems": len(dims)},
				"data":     map[string]any{"oneOf": []any{map[string]any{"type": "array", "items": elem}, map[string]any{"type": "string", "contentEncoding": "base64"}}},
			},
		})
	}
	return map[string]any{"type": "array", "minItems": len(specs), "maxItems": len(specs), "items": map[string]any{"oneOf": items}}
}
