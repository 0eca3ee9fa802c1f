// Package repository serves users' own ONNX models from a model
// repository, laid out in the spirit of Triton's:
//
//	<repository>/<model>/model.yaml          the tensors, postprocessing, policy
//	<repository>/<model>/<version>/model.onnx one directory per version
//
// Each model is registered under its directory's name and answers in the
// Open Inference Protocol's tensor shape (see Output). Several versions
// serve side by side; a request may pin one, else the model's version
// policy picks (latest, fixed, or a canary split by device). Scan
// reconciles what is served with what is on disk: a new or changed
// version loads beside the one serving and takes over only once it has
// passed a warm-up inference; a replaced or removed version finishes its
// requests, then is freed; a version that fails to load is reported and
// leaves what serves untouched.
package repository

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Options configure a repository.
type Options struct {
	// Dir is the repository's directory.
	Dir string
	// Registry receives the repository's models (and loses them when they
	// go); it may hold other models, whose names the repository leaves alone.
	Registry *inference.Registry
	// Threads is each session's intra-op threads.
	Threads int
	// OnChange is called after a scan changed what is served or how (the
	// catalog must be published again); never concurrently.
	OnChange func()
	// Log receives what loads and what fails.
	Log *slog.Logger
}

// Repository is a model repository being served.
type Repository struct {
	o        Options
	scan     sync.Mutex // one scan at a time
	mu       sync.Mutex // guards models and unloaded
	models   map[string]*model
	unloaded map[string]bool // unloaded by request: not served until loaded again
	closers  sync.WaitGroup  // versions draining
}

// Open serves the repository in o.Dir: it loads every model it holds (a
// model that fails is reported in the catalog and the log) and registers
// them.
func Open(o Options) (*Repository, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if st, err := os.Stat(o.Dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("models.repository %s: not a directory (%v)", o.Dir, err)
	}
	r := &Repository{o: o, models: map[string]*model{}, unloaded: map[string]bool{}}
	r.Scan()
	return r, nil
}

// Names are the repository's models.
func (r *Repository) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortVersions(mapsKeys(r.models))
}

// Scan reconciles every model with the disk and reports whether anything
// changed.
func (r *Repository) Scan() bool {
	r.scan.Lock()
	defer r.scan.Unlock()
	names := map[string]bool{}
	entries, err := os.ReadDir(r.o.Dir)
	if err != nil {
		r.o.Log.Warn("model repository unreadable", "dir", r.o.Dir, "error", err)
		return false
	}
	for _, e := range entries {
		if !e.IsDir() || topics.ValidID(e.Name()) != nil {
			continue
		}
		names[e.Name()] = true
	}
	r.mu.Lock()
	for n := range r.models {
		names[n] = true
	}
	r.mu.Unlock()
	changed := false
	for _, n := range sortVersions(mapsKeys(names)) {
		if r.reconcile(n) {
			changed = true
		}
	}
	if changed && r.o.OnChange != nil {
		r.o.OnChange()
	}
	return changed
}

// Load serves a model again after Unload (or loads it now, without
// waiting for the watcher); Unload stops serving it: its versions finish
// their requests, then are freed.
func (r *Repository) Load(name string) error {
	if topics.ValidID(name) != nil {
		return fmt.Errorf("%q is not a model name", name)
	}
	if st, err := os.Stat(filepath.Join(r.o.Dir, name, ConfigFile)); err != nil || st.IsDir() {
		return fmt.Errorf("model %q is not in the repository (no %s/%s)", name, name, ConfigFile)
	}
	r.mu.Lock()
	delete(r.unloaded, name)
	r.mu.Unlock()
	r.scan.Lock()
	changed := r.reconcile(name)
	r.scan.Unlock()
	if changed && r.o.OnChange != nil {
		r.o.OnChange()
	}
	r.mu.Lock()
	m := r.models[name]
	r.mu.Unlock()
	if m == nil {
		return fmt.Errorf("model %q did not load", name)
	}
	if info := m.Info(); info.Unavailable != "" {
		return fmt.Errorf("model %q: %s", name, info.Unavailable)
	}
	return nil
}

// Unload stops serving a model until Load.
func (r *Repository) Unload(name string) error {
	r.mu.Lock()
	_, ok := r.models[name]
	r.unloaded[name] = true
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("model %q is not served", name)
	}
	r.scan.Lock()
	changed := r.reconcile(name)
	r.scan.Unlock()
	if changed && r.o.OnChange != nil {
		r.o.OnChange()
	}
	return nil
}

// Close stops serving every model and waits until their versions are freed.
func (r *Repository) Close() {
	r.mu.Lock()
	for n := range r.models {
		r.unloaded[n] = true
	}
	names := mapsKeys(r.models)
	r.mu.Unlock()
	r.scan.Lock()
	for _, n := range names {
		r.reconcile(n)
	}
	r.scan.Unlock()
	r.closers.Wait()
}

// reconcile brings one model in line with the disk; it reports whether
// what is served changed. r.scan is held.
func (r *Repository) reconcile(name string) bool {
	dir := filepath.Join(r.o.Dir, name)
	r.mu.Lock()
	m := r.models[name]
	gone := r.unloaded[name]
	r.mu.Unlock()
	if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err != nil {
		gone = true
	}
	if gone {
		if m == nil {
			return false
		}
		r.remove(m)
		return true
	}
	cfg, cfgSum, cfgErr := readConfig(dir)
	disk := versionDirs(dir)

	fresh := m == nil
	if fresh {
		m = &model{name: name, dir: dir, versions: map[string]*version{}, failed: map[string]string{}}
	}
	m.mu.RLock()
	old := maps(m.versions)
	oldCfg := m.cfg
	m.mu.RUnlock()

	failed := map[string]string{}
	next := map[string]*version{}
	var retired []*version
	switch {
	case cfgErr != nil:
		// A broken model.yaml changes nothing that serves.
		r.o.Log.Warn("model not reloaded: its configuration is invalid", "model", name, "error", cfgErr)
		for _, v := range disk {
			failed[v] = cfgErr.Error()
		}
		next = old
		cfg = oldCfg
	default:
		sameCfg := oldCfg != nil && len(old) > 0 && anyVersion(old).configSum == cfgSum
		for _, v := range disk {
			path := filepath.Join(dir, v, WeightsFile)
			sum, err := onnx.Checksum(path)
			if err == nil {
				if cur := old[v]; cur != nil && cur.checksum == sum && cur.configSum == cfgSum {
					next[v] = cur
					continue
				}
				var nv *version
				if nv, err = r.load(name, v, path, sum, cfg, cfgSum); err == nil {
					next[v] = nv
					if cur := old[v]; cur != nil {
						retired = append(retired, cur)
					}
					r.o.Log.Info("model version loaded", "model", name, "version", v, "warm_ms", float64(nv.warm.Microseconds())/1000)
					continue
				}
			}
			failed[v] = err.Error()
			r.o.Log.Warn("model version not loaded", "model", name, "version", v, "error", err)
			if cur := old[v]; cur != nil && sameCfg {
				next[v] = cur // the version that served goes on serving
			}
		}
		if !sameCfg && len(failed) > 0 && len(old) > 0 {
			// A new configuration serves only when every version loads
			// with it: otherwise what served goes on, unchanged.
			for _, nv := range next {
				if old[nv.version] != nv {
					retired = append(retired, nv)
				}
			}
			retired = slices.DeleteFunc(retired, func(v *version) bool { return old[v.version] == v })
			next, cfg = old, oldCfg
		}
		for v, cur := range old {
			if next[v] != cur && !slices.Contains(retired, cur) {
				retired = append(retired, cur) // removed from disk, or replaced
			}
		}
	}

	if cfg == oldCfg {
		cfgSum = m.cfgSum // the configuration that serves did not change
	}
	m.mu.Lock()
	changed := fresh || cfgSum != m.cfgSum || !sameVersions(m.versions, next) || !sameStrings(m.failed, failed)
	m.versions, m.failed = next, failed
	if cfg != nil {
		m.cfg, m.cfgSum = cfg, cfgSum
		m.describe()
	} else {
		m.info = inference.Info{Name: name, Unavailable: "model.yaml: " + cfgErr.Error()}
	}
	m.mu.Unlock()

	if fresh {
		if err := r.o.Registry.Register(m); err != nil {
			r.o.Log.Warn("model of the repository not served: a built-in model has its name", "model", name)
			retired = append(retired, valuesOf(next)...)
			m.mu.Lock()
			m.versions = map[string]*version{}
			m.mu.Unlock()
			r.retire(retired)
			return false
		}
		r.mu.Lock()
		r.models[name] = m
		r.mu.Unlock()
	}
	r.retire(retired)
	return changed
}

// remove stops serving a model.
func (r *Repository) remove(m *model) {
	r.o.Registry.Unregister(m.name)
	r.mu.Lock()
	delete(r.models, m.name)
	r.mu.Unlock()
	m.mu.Lock()
	vs := valuesOf(m.versions)
	m.versions = map[string]*version{}
	m.mu.Unlock()
	r.o.Log.Info("model no longer served", "model", m.name)
	r.retire(vs)
}

// retire frees versions once their requests have finished.
func (r *Repository) retire(vs []*version) {
	for _, v := range vs {
		r.closers.Go(func() {
			v.close()
			r.o.Log.Info("model version freed", "model", v.name, "version", v.version)
		})
	}
}

// load loads one version: its graph must match the declared tensors, and
// it must pass a warm-up inference.
func (r *Repository) load(name, ver, path, sum string, cfg *Config, cfgSum string) (*version, error) {
	if err := onnx.Available(); err != nil {
		return nil, err
	}
	gin, gout, err := onnx.Inspect(path)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ver, WeightsFile, err)
	}
	// The version's own copy: the shapes it runs with are the declared
	// ones tightened by the graph's fixed dimensions.
	vc := *cfg
	if vc.Inputs, err = match("inputs", cfg.Inputs, gin); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ver, WeightsFile, err)
	}
	if vc.Outputs, err = match("outputs", cfg.Outputs, gout); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ver, WeightsFile, err)
	}
	if vc.Preprocess != nil {
		if err := vc.Preprocess.check(vc.Inputs); err != nil {
			return nil, fmt.Errorf("%s/%s: %w", ver, WeightsFile, err)
		}
	}
	s, err := onnx.Load(path, names(vc.Inputs), names(vc.Outputs), onnx.SessionOptions{Threads: r.o.Threads})
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ver, WeightsFile, err)
	}
	v := &version{name: name, version: ver, cfg: &vc, session: s, checksum: sum, configSum: cfgSum}
	v.idle = sync.NewCond(&v.mu)
	start := time.Now()
	if _, err := v.run(warmupInputs(vc.Inputs, cfg.Warmup)); err != nil {
		s.Close()
		return nil, fmt.Errorf("%s: warm-up inference: %w", ver, err)
	}
	v.warm = time.Since(start)
	v.info = inference.Info{Name: name, Version: ver, Cost: max(cfg.Cost, 1), Checksum: sum}
	return v, nil
}

// match checks declared tensors against the graph's and returns them with
// the graph's fixed dimensions filled in.
func match(what string, declared []TensorSpec, graph []onnx.TensorInfo) ([]TensorSpec, error) {
	g := map[string]onnx.TensorInfo{}
	for _, t := range graph {
		g[t.Name] = t
	}
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("declared %s %s do not match the graph's %s: %s", what, describe(declared), describeGraph(graph), fmt.Sprintf(format, args...))
	}
	if len(declared) != len(graph) {
		return nil, mismatch("%d declared, %d in the graph", len(declared), len(graph))
	}
	out := make([]TensorSpec, len(declared))
	for i, d := range declared {
		t, ok := g[d.Name]
		switch {
		case !ok:
			return nil, mismatch("the graph has no %q", d.Name)
		case t.DType != d.DType:
			return nil, mismatch("%q is %s in the graph", d.Name, t.DType)
		case len(t.Shape) != len(d.Shape):
			return nil, mismatch("%q has %d dimensions in the graph", d.Name, len(t.Shape))
		}
		s := TensorSpec{Name: d.Name, DType: d.DType, Shape: append([]int64(nil), d.Shape...)}
		for j, gd := range t.Shape {
			switch {
			case gd > 0 && d.Shape[j] > 0 && gd != d.Shape[j]:
				return nil, mismatch("%q: dimension %d is %d in the graph, %d declared", d.Name, j, gd, d.Shape[j])
			case gd > 0:
				s.Shape[j] = gd
			}
		}
		out[i] = s
	}
	return out, nil
}

func describeGraph(ts []onnx.TensorInfo) string {
	specs := make([]TensorSpec, len(ts))
	for i, t := range ts {
		specs[i] = TensorSpec{Name: t.Name, DType: t.DType, Shape: t.Shape}
	}
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = fmt.Sprintf("%s (%s %s)", s.Name, s.DType, shapeString(s.Shape))
	}
	return fmt.Sprint(parts)
}

// warmupInputs is one input per declared input, dynamic dimensions 1,
// filled with the model.yaml's warmup value for it, else 0.
func warmupInputs(specs []TensorSpec, fill map[string]float64) []onnx.Tensor {
	out := make([]onnx.Tensor, len(specs))
	for i, s := range specs {
		shape := make([]int64, len(s.Shape))
		n := int64(1)
		for j, d := range s.Shape {
			shape[j] = max(d, 1)
			n *= shape[j]
		}
		v := fill[s.Name]
		if s.DType == "int64" {
			data := make([]int64, n)
			for k := range data {
				data[k] = int64(v)
			}
			out[i] = onnx.Int64(data, shape...)
		} else {
			data := make([]float32, n)
			for k := range data {
				data[k] = float32(v)
			}
			out[i] = onnx.Float32(data, shape...)
		}
	}
	return out
}

func names(specs []TensorSpec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Name
	}
	return out
}

// readConfig reads a model's config and a checksum of it and its labels.
func readConfig(dir string) (*Config, string, error) {
	cfg, err := parseConfig(dir)
	if err != nil {
		return nil, "", err
	}
	h := sha256.New()
	for _, f := range []string{ConfigFile, cfg.Labels} {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, "", err
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	return cfg, hex.EncodeToString(h.Sum(nil)), nil
}

// versionDirs are a model's version directories that hold a model.onnx.
func versionDirs(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() || topics.ValidID(e.Name()) != nil {
			continue
		}
		if st, err := os.Stat(filepath.Join(dir, e.Name(), WeightsFile)); err == nil && st.Mode().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return sortVersions(out)
}

func maps(m map[string]*version) map[string]*version {
	out := make(map[string]*version, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func anyVersion(m map[string]*version) *version {
	for _, v := range m {
		return v
	}
	return nil
}

func valuesOf(m map[string]*version) []*version {
	out := make([]*version, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func sameVersions(a, b map[string]*version) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func sameStrings(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
