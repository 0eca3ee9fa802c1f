package service

import (
	"context"
	"maps"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/anomaly"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// Models are the built-in models a node serves, with their housekeeping.
type Models struct {
	Registry *inference.Registry
	anomaly  *anomaly.Model
}

// KnownModels are the names of the built-in models, for config validation.
func KnownModels() []string { return []string{"anomaly"} }

// NewModels loads the built-in models configured in cfg.
func NewModels(cfg config.Config) (*Models, error) {
	m := &Models{Registry: &inference.Registry{}}
	m.anomaly = anomaly.New(anomaly.Config{MaxSeries: cfg.Models.Anomaly.MaxSeries, IdleTTL: cfg.Models.Anomaly.IdleTTL})
	if err := m.Registry.Register(m.anomaly); err != nil {
		return nil, err
	}
	return m, nil
}

// Run evicts idle model state until ctx is done.
func (m *Models) Run(ctx context.Context) { m.anomaly.Run(ctx) }

// Close releases the models' resources.
func (m *Models) Close() {}

// NewThrottle builds the per-device limiter from cfg; a model's cost is its
// catalog cost unless models.costs overrides it.
func NewThrottle(cfg config.Config, models *inference.Registry) (*throttle.Limiter, error) {
	costs := map[string]int{}
	for _, info := range models.Catalog().Models {
		costs[info.Name] = max(info.Cost, 1)
	}
	maps.Copy(costs, cfg.Models.Costs)
	tc := throttle.Config{
		Default: throttle.Limits{Rate: cfg.Throttle.Rate, Burst: cfg.Throttle.Burst, MaxInFlight: cfg.Throttle.MaxInFlight},
		Costs:   costs,
		IdleTTL: cfg.Throttle.IdleTTL,
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
