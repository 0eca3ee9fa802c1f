package anomaly

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

// Defaults of Config.
const (
	DefaultMaxSeries = 100000
	DefaultIdleTTL   = time.Hour
)

// Config sets the bounds of a Model's state. The zero value means the defaults.
type Config struct {
	// MaxSeries is the most (device, sensor) series kept; past it the least
	// recently used series is dropped. 0 or less means DefaultMaxSeries.
	MaxSeries int
	// IdleTTL is how long a series may go without a sample before EvictIdle
	// drops it. 0 or less means DefaultIdleTTL.
	IdleTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

type seriesKey struct{ device, sensor string }

// Model is the anomaly detector. It is safe for concurrent use: a short
// lock covers the series table, and each series has its own lock, so
// requests for different series run in parallel.
type Model struct {
	cfg Config

	mu     sync.Mutex
	series map[seriesKey]*series
	// lru is the sentinel of a ring of all series, most recently used first.
	lru series
}

var (
	_ inference.Model     = (*Model)(nil)
	_ inference.Forgetter = (*Model)(nil)
)

// New returns a Model with no series yet.
func New(cfg Config) *Model {
	if cfg.MaxSeries <= 0 {
		cfg.MaxSeries = DefaultMaxSeries
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = DefaultIdleTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Model{cfg: cfg, series: make(map[seriesKey]*series)}
	m.lru.prev, m.lru.next = &m.lru, &m.lru
	return m
}

// Info describes the model for the catalog.
func (m *Model) Info() inference.Info {
	return inference.Info{
		Name:        "anomaly",
		Version:     "1",
		Description: "Streaming telemetry anomaly detection per device and sensor: EWMA z-score and median/MAD spikes, CUSUM level shifts.",
		Input:       inputSchema,
		Output:      outputSchema,
		Cost:        1,
		Streaming:   false,
		License:     "Apache-2.0",
		Source:      "built-in",
	}
}

// Infer judges the sample or batch in req.Input against the series of
// (req.Device, sensor) and takes it into that series. It returns a Result
// for one sample and a BatchResult for a batch. An invalid input or params
// is an inference.InvalidInput error and leaves every series unchanged; a
// batch, once valid, is applied whole.
func (m *Model) Infer(ctx context.Context, req inference.Request) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("anomaly: %w", err)
	}
	p, err := decodeParams(req.Params)
	if err != nil {
		return nil, err
	}
	in, err := decodeInput(req.Input)
	if err != nil {
		return nil, err
	}
	s := m.touch(seriesKey{req.Device, in.sensor})
	s.mu.Lock()
	defer s.mu.Unlock()
	// Another batch on this series may have held the lock for a while.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("anomaly: %w", err)
	}
	if !in.batch {
		out := Result{Sensor: in.sensor}
		s.take(in, 0, &p, &out)
		return out, nil
	}
	b := BatchResult{Sensor: in.sensor, Results: make([]Result, len(in.values))}
	for i := range in.values {
		s.take(in, i, &p, &b.Results[i])
		if b.Results[i].IsAnomaly {
			b.Anomalies++
		}
	}
	return b, nil
}

// take judges sample i of in, or marks it stale when its ts is not later
// than the series' last.
func (s *series) take(in input, i int, p *Params, out *Result) {
	x := in.values[i]
	if in.ts != nil {
		t := in.ts[i]
		out.TS = &t
		if s.hasTS && t <= s.lastTS {
			s.stale(x, out)
			return
		}
		s.lastTS, s.hasTS = t, true
	}
	s.step(x, p, out)
}

// touch returns the series for k, creating it (and evicting the least
// recently used one past MaxSeries) when it does not exist, and marks it used.
func (m *Model) touch(k seriesKey) *series {
	now := m.cfg.Now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.series[k]
	if s == nil {
		s = &series{key: k}
		m.series[k] = s
		for len(m.series) > m.cfg.MaxSeries {
			m.remove(m.lru.prev)
		}
	} else {
		s.prev.next, s.next.prev = s.next, s.prev
	}
	s.lastUsed = now
	s.prev, s.next = &m.lru, m.lru.next
	m.lru.next.prev = s
	m.lru.next = s
	return s
}

// remove drops s from the table and the LRU ring. m.mu must be held.
func (m *Model) remove(s *series) {
	delete(m.series, s.key)
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
}

// Forget drops the series of the devices match selects (inference.Forgetter).
func (m *Model) Forget(match func(device string) bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, s := range m.series {
		if match(k.device) {
			m.remove(s)
			n++
		}
	}
	return n
}

// Len returns the number of series tracked.
func (m *Model) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.series)
}

// EvictIdle drops every series that has gone longer than IdleTTL without a
// sample and returns how many it dropped.
func (m *Model) EvictIdle() int {
	cutoff := m.cfg.Now().Add(-m.cfg.IdleTTL).UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for s := m.lru.prev; s != &m.lru && s.lastUsed < cutoff; s = m.lru.prev {
		m.remove(s)
		n++
	}
	return n
}

// Run calls EvictIdle every IdleTTL/4 (at least every minute, at most
// every second) until ctx is done. It blocks; the caller owns the goroutine.
func (m *Model) Run(ctx context.Context) { inference.EvictEvery(ctx, m.cfg.IdleTTL, m.EvictIdle) }
