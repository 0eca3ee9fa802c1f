package service

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Giving memory back when devices leave or go idle. Go returns freed
// memory to the operating system slowly, and only after a collection,
// which an idle process may not run for minutes: after 10,000 devices left,
// the RSS they took stayed. The node collects and returns what it can, at
// once, when
//   - the connected clients fall to half of their peak (and by at least
//     releaseMin), or
//   - goroutine stacks fall to half of their peak (and by at least
//     releaseStackMin): the read loops of idle clients move to small stacks
//     (broker.Options.ReadIdleRestart), freeing the 32 KB each had grown to.
//
// It costs one collection per such drop.
const (
	releaseEvery    = 5 * time.Second
	releaseMin      = 1000
	releaseStackMin = 16 << 20
)

// releaseMemory watches the connected clients and the stacks until ctx ends.
func (s *Service) releaseMemory(ctx context.Context) {
	t := time.NewTicker(releaseEvery)
	defer t.Stop()
	peak, stackPeak := 0, uint64(0)
	// The memory held for goroutine stacks (a sample of this goroutine's
	// own: several services may run in one process).
	stackBytes := []metrics.Sample{{Name: "/memory/classes/heap/stacks:bytes"}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := s.broker.Clients()
		peak = max(peak, n)
		metrics.Read(stackBytes)
		stacks := stackBytes[0].Value.Uint64()
		stackPeak = max(stackPeak, stacks)
		var why string
		switch {
		case n <= peak/2 && peak-n >= releaseMin:
			why = "devices left"
		case stacks <= stackPeak/2 && stackPeak-stacks >= releaseStackMin:
			why = "devices idle"
		default:
			continue
		}
		start := time.Now()
		debug.FreeOSMemory()
		s.log.Info(why+": memory returned to the system", "clients", n, "peak", peak,
			"stack_mb", stacks>>20, "stack_peak_mb", stackPeak>>20, "took", time.Since(start))
		peak, stackPeak = n, stacks
	}
}
