package service

import (
	"runtime"

	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// Held is what a node holds on behalf of devices, counted from its own
// structures (not from memory use): once devices have left and their idle
// state has expired, every count is back where it started.
type Held struct {
	broker.Held
	// Buckets are the throttle's tracked devices, MQTT and HTTP.
	Buckets int
	// Lanes and Running are the worker pool's per-device queues and
	// running requests.
	Lanes   int
	Running int
	// ModelState is, by model, the devices a model keeps state for
	// (anomaly series, vad streams).
	ModelState map[string]int
	// Goroutines is the process's goroutine count.
	Goroutines int
}

// Held counts what the node holds for devices.
func (s *Service) Held() Held {
	h := Held{Held: s.broker.Held(), ModelState: map[string]int{}, Goroutines: runtime.NumGoroutine()}
	for _, l := range []*throttle.Limiter{s.limiter, s.httpLim} {
		if l != nil {
			h.Buckets += l.Len()
		}
	}
	if s.pool != nil {
		h.Lanes, h.Running = s.pool.Held()
	}
	for _, name := range s.models.Registry.Names() {
		m, _ := s.models.Registry.Get(name)
		if l, ok := m.(interface{ Len() int }); ok {
			h.ModelState[name] = l.Len()
		}
	}
	return h
}
