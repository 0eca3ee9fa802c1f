package repository

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mqttinfer/mqttinfer/topics"
)

// ConfigFile is the name of a model's configuration in its directory.
const ConfigFile = "model.yaml"

// WeightsFile is the name of a version's ONNX file in its directory.
const WeightsFile = "model.onnx"

// Config is a model's model.yaml. The smallest valid one declares the
// tensors:
//
//	inputs:  [{name: x, dtype: float32, shape: [-1, 4]}]
//	outputs: [{name: y, dtype: float32, shape: [-1, 4]}]
type Config struct {
	Description string `yaml:"description"`
	License     string `yaml:"license"`
	// Source says where the weights come from (a package, a URL).
	Source string `yaml:"source"`
	// Cost is the throttle tokens a request takes; 0 means 1.
	Cost    int          `yaml:"cost"`
	Inputs  []TensorSpec `yaml:"inputs"`
	Outputs []TensorSpec `yaml:"outputs"`
	// Labels names a file in the model's directory with one class label a
	// line, for the postprocessing's top-k.
	Labels      string       `yaml:"labels"`
	Preprocess  *Preprocess  `yaml:"preprocess"`
	Postprocess *Postprocess `yaml:"postprocess"`
	// VersionPolicy picks the version that answers a request that pins
	// none: "latest" (the default), {fixed: "2"}, or {canary: {"1": 90,
	// "2": 10}} (shares by device, by a stable hash of its id).
	VersionPolicy Policy `yaml:"version_policy"`
	// Warmup fills the named inputs of the warm-up inference a version
	// must pass before it serves with a value instead of 0 (an input the
	// graph reads as a setting, such as a sample rate).
	Warmup map[string]float64 `yaml:"warmup"`

	labels []string // read from Labels
}

// TensorSpec declares one input or output tensor.
type TensorSpec struct {
	Name  string `yaml:"name"`
	DType string `yaml:"dtype"`
	// Shape has -1 for a dynamic dimension; [] (or none) is a scalar.
	Shape []int64 `yaml:"shape"`
}

// Postprocess turns an output into what a device wants.
type Postprocess struct {
	// Output is the output tensor it applies to; "" means the first.
	Output string `yaml:"output"`
	// Activation is applied along the last dimension: "", "softmax" or
	// "sigmoid".
	Activation string `yaml:"activation"`
	// TopK adds, for each row (the last dimension is the classes), the k
	// best classes with their labels; 1 is the argmax.
	TopK int `yaml:"top_k"`
}

// Policy is a model's version policy.
type Policy struct {
	Fixed  string         // set for {fixed: v}
	Canary map[string]int // set for {canary: {v: weight}}
}

// String is the policy as the catalog says it.
func (p Policy) String() string {
	switch {
	case p.Fixed != "":
		return "fixed " + p.Fixed
	case p.Canary != nil:
		var parts []string
		for _, v := range sortVersions(mapsKeys(p.Canary)) {
			parts = append(parts, fmt.Sprintf("%s:%d", v, p.Canary[v]))
		}
		return "canary " + strings.Join(parts, " ")
	}
	return "latest"
}

// UnmarshalYAML reads "latest", {fixed: v} or {canary: {v: weight, ...}}.
func (p *Policy) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value != "latest" && n.Value != "" {
			return fmt.Errorf("line %d: version_policy %q: want latest, {fixed: <version>} or {canary: {<version>: <weight>, ...}}", n.Line, n.Value)
		}
		*p = Policy{}
		return nil
	}
	var m struct {
		Fixed  string         `yaml:"fixed"`
		Canary map[string]int `yaml:"canary"`
	}
	if err := n.Decode(&m); err != nil {
		return err
	}
	if (m.Fixed == "") == (m.Canary == nil) {
		return fmt.Errorf("line %d: version_policy: want exactly one of fixed or canary", n.Line)
	}
	*p = Policy{Fixed: m.Fixed, Canary: m.Canary}
	return nil
}

// The element types a repository model's tensors may have (what the ONNX
// layer runs), and their names in the Open Inference Protocol.
var dtypes = map[string]string{"float32": "FP32", "int64": "INT64"}

// parseConfig reads and checks a model's model.yaml; dir is the model's
// directory (for the labels file).
func parseConfig(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, err
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", ConfigFile, err)
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", ConfigFile, err)
	}
	if c.Labels != "" {
		if strings.ContainsAny(c.Labels, `/\`) || c.Labels == ".." {
			return nil, fmt.Errorf("%s: labels %q: a file of the model's directory, without a path", ConfigFile, c.Labels)
		}
		lb, err := os.ReadFile(filepath.Join(dir, c.Labels))
		if err != nil {
			return nil, fmt.Errorf("%s: labels: %w", ConfigFile, err)
		}
		for _, l := range strings.Split(strings.TrimRight(string(lb), "\n"), "\n") {
			c.labels = append(c.labels, strings.TrimRight(l, "\r"))
		}
	}
	return &c, nil
}

// check reports every problem of a config at once.
func (c *Config) check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Cost < 0 {
		bad("cost %d: must be 0 (1 token) or more", c.Cost)
	}
	for _, set := range []struct {
		what  string
		specs []TensorSpec
	}{{"inputs", c.Inputs}, {"outputs", c.Outputs}} {
		if len(set.specs) == 0 {
			bad("%s: declare at least one tensor, like [{name: x, dtype: float32, shape: [-1, 4]}]", set.what)
		}
		seen := map[string]bool{}
		for i, t := range set.specs {
			switch {
			case t.Name == "":
				bad("%s[%d]: no name", set.what, i)
			case seen[t.Name]:
				bad("%s: %q declared twice", set.what, t.Name)
			}
			seen[t.Name] = true
			if _, ok := dtypes[t.DType]; !ok {
				bad("%s %q: dtype %q: want one of %s", set.what, t.Name, t.DType, strings.Join(sortVersions(mapsKeys(dtypes)), ", "))
			}
			for _, d := range t.Shape {
				if d == 0 || d < -1 {
					bad("%s %q: shape %v: dimensions are positive, or -1 for dynamic", set.what, t.Name, t.Shape)
					break
				}
			}
		}
	}
	for name := range c.Warmup {
		if !slices.ContainsFunc(c.Inputs, func(t TensorSpec) bool { return t.Name == name }) {
			bad("warmup: %q is not a declared input", name)
		}
	}
	if c.Preprocess != nil && len(c.Inputs) > 0 {
		if err := c.Preprocess.check(c.Inputs); err != nil {
			errs = append(errs, err)
		}
	}
	if p := c.Postprocess; p != nil {
		if p.Output != "" && !slices.ContainsFunc(c.Outputs, func(t TensorSpec) bool { return t.Name == p.Output }) {
			bad("postprocess: output %q is not declared", p.Output)
		}
		if p.Activation != "" && p.Activation != "softmax" && p.Activation != "sigmoid" {
			bad("postprocess: activation %q: want softmax or sigmoid", p.Activation)
		}
		if p.TopK < 0 {
			bad("postprocess: top_k %d: must be 0 or more", p.TopK)
		}
		if out := c.postOutput(); out != nil && out.DType != "float32" {
			bad("postprocess: output %q is %s: it needs float32 scores", out.Name, out.DType)
		}
	}
	for v, w := range c.VersionPolicy.Canary {
		if topics.ValidID(v) != nil || w < 0 {
			bad("version_policy: canary %q: %d: versions are ids, weights 0 or more", v, w)
		}
	}
	if c.VersionPolicy.Fixed != "" && topics.ValidID(c.VersionPolicy.Fixed) != nil {
		bad("version_policy: fixed %q is not a version", c.VersionPolicy.Fixed)
	}
	return errors.Join(errs...)
}

// postOutput is the output the postprocessing applies to, nil for none.
func (c *Config) postOutput() *TensorSpec {
	p := c.Postprocess
	if p == nil || len(c.Outputs) == 0 {
		return nil
	}
	for i := range c.Outputs {
		if c.Outputs[i].Name == p.Output || p.Output == "" {
			return &c.Outputs[i]
		}
	}
	return nil
}

// sortVersions sorts versions for people and for "latest": numbers by
// value, before any other name, which sort as strings.
func sortVersions(vs []string) []string {
	slices.SortFunc(vs, compareVersions)
	return vs
}

func compareVersions(a, b string) int {
	na, ea := strconv.ParseUint(a, 10, 64)
	nb, eb := strconv.ParseUint(b, 10, 64)
	switch {
	case ea == nil && eb == nil:
		if na != nb {
			if na < nb {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}

func mapsKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
