package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/anomaly"
	"github.com/mqttinfer/mqttinfer/inference/llm"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
	"github.com/mqttinfer/mqttinfer/inference/onnx/detect"
	"github.com/mqttinfer/mqttinfer/inference/onnx/ocr"
	"github.com/mqttinfer/mqttinfer/inference/onnx/vad"
	"github.com/mqttinfer/mqttinfer/inference/repository"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// Models are the models a node serves (the built-in ones and the model
// repository's), with their housekeeping.
type Models struct {
	Registry *inference.Registry
	// Repository is the model repository, nil without one.
	Repository *repository.Repository
	runners    []func(context.Context) // eviction loops, the repository's watcher
	closers    []func() error
	changes    chan struct{} // a repository scan changed the catalog
}

// KnownModels are the names of the built-in models, for config validation:
// every model the binary knows, loaded here or not.
func KnownModels() []string { return []string{"anomaly", "chat", "detect", "ocr", "vad"} }

// NewModels loads the built-in models configured in cfg. The ONNX models
// need the runtime library and their files in cfg.Models.Dir (`make
// models`); when either is missing the node still serves the others, and
// the catalog lists the missing model as unavailable with the reason.
func NewModels(cfg config.Config, log *slog.Logger) (*Models, error) {
	m := &Models{Registry: &inference.Registry{}, changes: make(chan struct{}, 1)}
	a := anomaly.New(anomaly.Config{MaxSeries: cfg.Models.Anomaly.MaxSeries, IdleTTL: cfg.Models.Anomaly.IdleTTL})
	m.runners = append(m.runners, a.Run)
	if err := m.Registry.Register(a); err != nil {
		return nil, err
	}

	rtErr := initRuntime(cfg.Models.Dir)
	if rtErr != nil {
		log.Warn("ONNX models unavailable", "reason", rtErr)
	}
	v, err := loadONNX(rtErr, vad.Describe, func() (*vad.Model, error) {
		return vad.New(vad.Config{Dir: cfg.Models.Dir, Threads: cfg.Models.Threads, MaxStreams: cfg.Models.VAD.MaxStreams, IdleTTL: cfg.Models.VAD.IdleTTL,
			MaxSamples: vadSamples(cfg.Models.VAD.MaxRequestSize)})
	})
	if err := m.add(v, err, log); err != nil {
		return nil, err
	}
	if vm, ok := v.(*vad.Model); ok {
		m.runners = append(m.runners, vm.Run)
		m.closers = append(m.closers, vm.Close)
	}

	o, err := loadONNX(rtErr, ocr.Describe, func() (*ocr.Model, error) {
		return ocr.New(ocr.Config{Dir: cfg.Models.Dir, Threads: cfg.Models.Threads, MaxPixels: cfg.Models.OCR.MaxPixels})
	})
	if err := m.add(o, err, log); err != nil {
		return nil, err
	}
	if om, ok := o.(*ocr.Model); ok {
		m.closers = append(m.closers, om.Close)
	}

	dt, err := loadONNX(rtErr, detect.Describe, func() (*detect.Model, error) {
		return detect.New(detect.Config{Dir: cfg.Models.Dir, Threads: cfg.Models.Threads, MaxPixels: cfg.Models.Detect.MaxPixels,
			MaxBatch: cfg.Models.Detect.MaxBatch, MaxDelay: cfg.Models.Detect.MaxDelay})
	})
	if err := m.add(dt, err, log); err != nil {
		return nil, err
	}
	if dm, ok := dt.(*detect.Model); ok {
		m.closers = append(m.closers, dm.Close)
	}

	if err := m.loadChat(cfg.Models.Chat, log); err != nil {
		return nil, err
	}
	if cfg.Models.Repository != "" {
		if rtErr != nil {
			log.Warn("the model repository's models are unavailable without ONNX Runtime", "reason", rtErr)
		}
		repo, err := repository.Open(repository.Options{Dir: cfg.Models.Repository, Registry: m.Registry, Threads: cfg.Models.Threads,
			OnChange: m.changed, Log: log.With("component", "repository")})
		if err != nil {
			return nil, err
		}
		m.Repository = repo
		m.runners = append(m.runners, func(ctx context.Context) { repo.Watch(ctx, cfg.Models.RepositoryPoll) })
		m.closers = append(m.closers, func() error { repo.Close(); return nil })
		log.Info("model repository", "dir", cfg.Models.Repository, "models", repo.Names())
	}
	for name, size := range map[string]int{
		"anomaly": cfg.MQTT.MaxRequestSize,
		"chat":    cfg.MQTT.MaxRequestSize,
		"vad":     cfg.Models.VAD.MaxRequestSize,
		"ocr":     cfg.Models.OCR.MaxRequestSize,
		"detect":  cfg.Models.Detect.MaxRequestSize,
	} {
		m.Registry.SetMaxRequestSize(name, size)
	}
	return m, nil
}

// changed signals that the catalog changed (a repository scan).
func (m *Models) changed() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// Changes delivers a value after the catalog changed.
func (m *Models) Changes() <-chan struct{} { return m.changes }

// Reload scans the model repository now (SIGHUP); it reports whether
// anything changed.
func (m *Models) Reload() bool {
	if m.Repository == nil {
		return false
	}
	return m.Repository.Scan()
}

// vadSamples is the most samples a vad request of size bytes can carry as
// base64 pcm16 in JSON (1 KiB left for the envelope): the model's limit
// matches the request size limit, and the catalog says how long it is.
func vadSamples(size int) int {
	return max((size-1024)*3/4/2, vad.SampleRate)
}

// add registers a loaded model, or logs why it could not load.
func (m *Models) add(model inference.Model, loadErr error, log *slog.Logger) error {
	if loadErr != nil {
		log.Warn("model unavailable", "model", model.Info().Name, "reason", loadErr)
	}
	return m.Registry.Register(model)
}

// loadChat configures the chat model. Without a base URL it is listed
// unavailable as not configured, which is not worth a warning.
func (m *Models) loadChat(cfg config.Chat, log *slog.Logger) error {
	if cfg.BaseURL == "" {
		info := llm.Describe()
		info.Cost = cfg.Cost
		info.Unavailable = "not configured: set models.chat.base_url and models.chat.model (an OpenAI-compatible server such as Ollama or llama.cpp)"
		return m.Registry.Register(unavailable{info})
	}
	c, err := llm.New(llm.Config{
		BaseURL:     cfg.BaseURL,
		Model:       cfg.Model,
		APIKeyEnv:   cfg.APIKeyEnv,
		Timeout:     cfg.Timeout,
		IdleTimeout: cfg.IdleTimeout,
		MaxTokens:   cfg.MaxTokens,
		Cost:        cfg.Cost,
	})
	if err != nil {
		info := llm.Describe()
		info.Cost = cfg.Cost
		info.Unavailable = unavailableReason(err)
		return m.add(unavailable{info}, err, log)
	}
	m.closers = append(m.closers, c.Close)
	return m.Registry.Register(c)
}

var runtimeMu sync.Mutex

// initRuntime loads ONNX Runtime from dir. The runtime loads once per
// process (onnx.Init); a directory without the library is not remembered,
// so a later node with another models directory can still load it.
func initRuntime(dir string) error {
	runtimeMu.Lock()
	defer runtimeMu.Unlock()
	lib, err := onnx.Library(dir)
	if err != nil {
		if onnx.Available() == nil {
			return nil // loaded already, from another directory; the models' own files are checked by their loaders
		}
		return err
	}
	return onnx.Init(lib)
}

// loadONNX loads an ONNX model, or returns a stand-in that the catalog
// lists as unavailable with the reason, and the reason.
func loadONNX[M inference.Model](rtErr error, describe func() inference.Info, load func() (M, error)) (inference.Model, error) {
	err := rtErr
	if err == nil {
		var model M
		if model, err = load(); err == nil {
			return model, nil
		}
	}
	info := describe()
	info.Unavailable = unavailableReason(err)
	return unavailable{info}, err
}

func unavailableReason(err error) string {
	if errors.Is(err, onnx.ErrUnavailable) {
		return err.Error()
	}
	return fmt.Sprintf("failed to load: %v", err)
}

// unavailable stands in for a model that could not be loaded.
type unavailable struct{ info inference.Info }

func (u unavailable) Info() inference.Info { return u.info }

func (u unavailable) Infer(context.Context, inference.Request) (any, error) {
	return nil, errors.New(u.info.Unavailable)
}

// Run runs the models' housekeeping (idle state eviction) until ctx is done.
func (m *Models) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, run := range m.runners {
		wg.Go(func() { run(ctx) })
	}
	wg.Wait()
}

// Close releases the models' resources.
func (m *Models) Close() {
	for _, c := range m.closers {
		_ = c()
	}
}

// NewThrottle builds the per-device limiter from cfg; a model's cost is its
// catalog cost unless models.costs overrides it.
func NewThrottle(cfg config.Config, models *inference.Registry) (*throttle.Limiter, error) {
	costs := map[string]int{}
	for _, info := range models.Catalog().Models {
		if info.Unavailable == "" { // requests for it are refused before the throttle
			costs[info.Name] = max(info.Cost, 1)
		}
	}
	maps.Copy(costs, cfg.Models.Costs)
	tc := throttle.Config{
		Default: throttle.Limits{Rate: cfg.Throttle.Rate, Burst: cfg.Throttle.Burst, MaxInFlight: cfg.Throttle.MaxInFlight},
		Costs:   costs,
		IdleTTL: cfg.Throttle.IdleTTL,
		// Models that come with the repository later cost what their
		// catalog entry says.
		CostOf: func(model string) (int, bool) {
			if m, ok := models.Get(model); ok {
				return m.Info().Cost, true
			}
			return 0, false
		},
	}
	for _, o := range cfg.Throttle.Overrides {
		tc.Overrides = append(tc.Overrides, throttle.Override{
			Pattern: o.Pattern,
			Limits:  throttle.Limits{Rate: o.Rate, Burst: o.Burst, MaxInFlight: o.MaxInFlight},
			Costs:   o.Costs,
		})
	}
	return throttle.New(tc)
}
