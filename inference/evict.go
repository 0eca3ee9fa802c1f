package inference

import (
	"context"
	"time"
)

// EvictEvery calls evict every idleTTL/4 (at least every minute, at most
// every second) until ctx is done: the loop behind the Run method of models
// that keep state per device and forget it when idle. It blocks; the caller
// owns the goroutine.
func EvictEvery(ctx context.Context, idleTTL time.Duration, evict func() int) {
	t := time.NewTicker(min(max(idleTTL/4, time.Second), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			evict()
		}
	}
}
