package service

import (
	"context"
	"runtime/debug"
	"time"
)

// Giving memory back when devices leave. Go returns freed memory to the
// operating system slowly, and only after a collection, which an idle
// process may not run for minutes: after 10,000 devices left, the RSS they
// took stayed. When the connected clients fall to half of their peak (and
// by at least releaseMin), the node collects and returns what it can, at
// once. It costs one collection per such drop.
const (
	releaseEvery = 5 * time.Second
	releaseMin   = 1000
)

// releaseMemory watches the connected clients until ctx ends.
func (s *Service) releaseMemory(ctx context.Context) {
	t := time.NewTicker(releaseEvery)
	defer t.Stop()
	peak := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := s.broker.Clients()
		peak = max(peak, n)
		if n <= peak/2 && peak-n >= releaseMin {
			start := time.Now()
			debug.FreeOSMemory()
			s.log.Info("devices left: memory returned to the system", "clients", n, "peak", peak, "took", time.Since(start))
			peak = n
		}
	}
}
