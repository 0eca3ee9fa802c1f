// Package inference owns the Model interface, the registry of loaded models
// and the model catalog. Models know nothing of MQTT, topics or transports:
// they take a decoded input and return what they computed.
package inference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Info describes a model for the catalog.
type Info struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description"`
	// Input and Output are JSON Schemas of the model's input and output.
	Input  json.RawMessage `json:"input_schema,omitempty"`
	Output json.RawMessage `json:"output_schema,omitempty"`
	// Cost is the tokens one request takes from the device's bucket.
	Cost int `json:"cost"`
	// Streaming is true when the model can answer with stream events.
	Streaming bool   `json:"streaming"`
	License   string `json:"license,omitempty"`
	// Source is where the weights come from, e.g. "npm @ricky0123/vad-web@0.0.31 dist/silero_vad_v5.onnx".
	Source string `json:"source,omitempty"`
	// Checksum is the sha256 of the weights file(s) loaded, hex.
	Checksum string `json:"checksum,omitempty"`
	// Runtime is what runs the model: "go" or "onnxruntime <version>".
	Runtime string `json:"runtime,omitempty"`
	// WarmLatencyMS is one request's latency measured after warm-up at
	// load time, in milliseconds (0 when not measured).
	WarmLatencyMS float64 `json:"warm_latency_ms,omitempty"`
	// Unavailable is set, with the reason, when the model is known but cannot
	// serve here (its runtime or weights are missing).
	Unavailable string `json:"unavailable,omitempty"`
	// MaxRequestSize is the largest request body the service accepts for
	// the model, in bytes (the registry's, see Registry.SetMaxRequestSize);
	// bigger requests are answered 413.
	MaxRequestSize int `json:"max_request_bytes,omitempty"`
	// Versions lists the versions of a model served in several (a
	// repository model), and VersionPolicy says which answers a request
	// that pins none. Version is then the policy's main version.
	Versions      []VersionInfo `json:"versions,omitempty"`
	VersionPolicy string        `json:"version_policy,omitempty"`
}

// VersionInfo is one version of a model served in several.
type VersionInfo struct {
	Version string `json:"version"`
	// State is "serving", or "failed" (Error says why; the version that
	// served before, if any, goes on serving).
	State string `json:"state"`
	// SharePercent is the share of the requests that pin no version this
	// version answers under the policy.
	SharePercent float64 `json:"share_percent"`
	Checksum     string  `json:"checksum,omitempty"`
	// WarmLatencyMS is its warm-up inference's latency at load.
	WarmLatencyMS float64 `json:"warm_latency_ms,omitempty"`
	Error         string  `json:"error,omitempty"`
}

// Request is one inference call as a model sees it.
type Request struct {
	// Device is the id of the device that asked; models that keep state per
	// device (streams of telemetry or audio) key it on this.
	Device string
	// Input is the model-specific input, raw JSON.
	Input json.RawMessage
	// Params are the model-specific options, raw JSON (may be nil).
	Params json.RawMessage
}

// Model is a loaded model. Infer must be safe for concurrent use and must
// respect ctx. It returns the output, which the transport encodes as JSON.
type Model interface {
	Info() Info
	Infer(ctx context.Context, req Request) (any, error)
}

// Streamer is implemented by models that can stream partial results. emit
// is called with each delta in order; the returned output ends the stream.
type Streamer interface {
	Model
	InferStream(ctx context.Context, req Request, emit func(delta any) error) (any, error)
}

// Versioned is implemented by models served in several versions side by
// side (a model repository's). Acquire returns the version that answers a
// request of device (the pinned one when pinned is set, else the one the
// model's version policy picks for the device) and a release to call once
// that version's work for the request is over: a version being unloaded
// waits for its requests to finish. A pinned version the model does not
// have is a *VersionError.
type Versioned interface {
	Model
	Acquire(device, pinned string) (Model, func(), error)
}

// VersionError says that a model has no such version.
type VersionError struct {
	Model, Version string
	// Versions are the versions the model has.
	Versions []string
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("model %q has no version %q; versions: %v", e.Model, e.Version, e.Versions)
}

// Forgetter is implemented by models that carry state per device (a
// telemetry series, an audio stream). Forget drops the state of every
// device for which match returns true and returns how many states it
// dropped; the devices' next requests start afresh (a series warms up
// again). A remote worker calls it for the devices it takes over from
// another worker, so that it never resumes from what it knew of them
// before they moved away.
type Forgetter interface {
	Forget(match func(device string) bool) int
}

// InputError is returned by a model when the input is well-formed JSON but not
// a valid input for it; transports answer it with 422 invalid_input.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

// InvalidInput builds an *InputError with a formatted message.
func InvalidInput(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// IsInvalidInput reports whether err is (or wraps) an *InputError.
func IsInvalidInput(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}

// Registry holds the models a node serves, by name. The zero value is empty
// and ready to use.
type Registry struct {
	mu     sync.RWMutex
	models map[string]Model
	limits map[string]int // request size limits by model, bytes
}

// SetMaxRequestSize sets the largest request body accepted for the model
// name, in bytes; the catalog states it.
func (r *Registry) SetMaxRequestSize(name string, bytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.limits == nil {
		r.limits = make(map[string]int)
	}
	r.limits[name] = bytes
}

// MaxRequestSize is the request size limit of the model name, in bytes; 0
// when none is set (the transport's default applies).
func (r *Registry) MaxRequestSize(name string) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.limits[name]
}

// Register adds m under its Info().Name; a second model with the same name is an error.
func (r *Registry) Register(m Model) error {
	name := m.Info().Name
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.models == nil {
		r.models = make(map[string]Model)
	}
	if _, dup := r.models[name]; dup {
		return fmt.Errorf("model %q registered twice", name)
	}
	r.models[name] = m
	return nil
}

// Unregister removes the model named name; it reports whether there was one.
func (r *Registry) Unregister(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.models[name]
	delete(r.models, name)
	return ok
}

// Get returns the model named name.
func (r *Registry) Get(name string) (Model, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m, ok := r.models[name]
	return m, ok
}

// Has reports whether a model named name is registered.
func (r *Registry) Has(name string) bool {
	_, ok := r.Get(name)
	return ok
}

// Names returns the registered model names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.models))
	for n := range r.models {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Catalog is the model catalog published on the models topic.
type Catalog struct {
	Models []Info `json:"models"`
}

// Catalog returns the Info of every registered model, sorted by name.
func (r *Registry) Catalog() Catalog {
	var c Catalog
	for _, n := range r.Names() {
		m, _ := r.Get(n)
		info := m.Info()
		info.MaxRequestSize = r.MaxRequestSize(n)
		if info.Versions == nil && info.Unavailable == "" {
			// A model served in one version lists it the same way.
			info.Versions = []VersionInfo{{Version: info.Version, State: "serving", SharePercent: 100,
				Checksum: info.Checksum, WarmLatencyMS: info.WarmLatencyMS}}
		}
		c.Models = append(c.Models, info)
	}
	return c
}

// Metered is implemented by model outputs that report what a request really
// consumed (an LLM's tokens). Transports charge the model's cost up front,
// send usage to the device with the final stream event, and settle the
// device's throttle to share × the cost charged.
type Metered interface {
	// Consumed returns the usage to report and the share of the up-front
	// cost the request really used, in [0, 1].
	Consumed() (usage any, share float64)
}

// UnavailableError means a model cannot serve a request now through no fault
// of the request: its backend is unreachable, refuses the service's
// credentials, is rate limited or failed. Transports answer 503
// model_unavailable, with RetryAfter when it is known.
type UnavailableError struct {
	Msg        string
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string { return e.Msg }

func (e *UnavailableError) Unwrap() error { return e.Err }
