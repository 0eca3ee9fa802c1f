package throttle

import (
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"
)

// Benchmarks use the real clock and limits high enough that every request is
// admitted, so they measure the admitting path: Allow and then Done.
var benchLimits = Limits{Rate: 1e9, Burst: 1e9, MaxInFlight: 4}

// BenchmarkBaselineRateLimiter is a bare rate.Limiter.Allow on one limiter:
// the floor that BenchmarkAllow adds its overhead to.
func BenchmarkBaselineRateLimiter(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(benchLimits.Rate), benchLimits.Burst)
	for b.Loop() {
		if !lim.Allow() {
			b.Fatal("refused")
		}
	}
}

// BenchmarkAllow is one decision (Allow, then Done) for a single device.
func BenchmarkAllow(b *testing.B) {
	l := mustNew(b, Config{Default: benchLimits, Costs: map[string]int{"chat": 4}})
	for b.Loop() {
		if !l.Allow("dev-1", "anomaly").Allowed {
			b.Fatal("refused")
		}
		l.Done("dev-1")
	}
}

// BenchmarkAllowRefused is the flood path: a device far over its rate.
func BenchmarkAllowRefused(b *testing.B) {
	l := mustNew(b, Config{Default: Limits{Rate: 1e-3, Burst: 1}})
	l.Allow("dev-1", "anomaly")
	for b.Loop() {
		if l.Allow("dev-1", "anomaly").Allowed {
			b.Fatal("allowed")
		}
	}
}

// BenchmarkAllowManyDevices rotates over 100k tracked devices, so that the
// devices' state does not stay in the CPU caches.
func BenchmarkAllowManyDevices(b *testing.B) {
	const n = 100_000
	l := mustNew(b, Config{Default: benchLimits})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(i)
		l.Allow(ids[i], "anomaly")
		l.Done(ids[i])
	}
	i := 0
	for b.Loop() {
		id := ids[i%n]
		if !l.Allow(id, "anomaly").Allowed {
			b.Fatal("refused")
		}
		l.Done(id)
		i++
	}
}

// BenchmarkAllowParallel runs Allow and Done from GOMAXPROCS goroutines, each
// over its own 1024 devices.
func BenchmarkAllowParallel(b *testing.B) {
	l := mustNew(b, Config{Default: benchLimits})
	var worker atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		w := strconv.FormatInt(worker.Add(1), 10)
		ids := make([]string, 1024)
		for i := range ids {
			ids[i] = "dev-" + w + "-" + strconv.Itoa(i)
		}
		i := 0
		for pb.Next() {
			id := ids[i%len(ids)]
			if !l.Allow(id, "anomaly").Allowed {
				b.Error("refused")
				return
			}
			l.Done(id)
			i++
		}
	})
}

// BenchmarkBytesPerDevice tracks b.N new devices (ns/op is the cost of a
// device's first request, id formatting included) and reports the live heap
// per tracked device, for a short id ("dev-123456") and a UUID-length one.
func BenchmarkBytesPerDevice(b *testing.B) {
	for _, idLen := range []int{10, 36} {
		b.Run("id="+strconv.Itoa(idLen)+"B", func(b *testing.B) {
			l := mustNew(b, Config{Default: Limits{Rate: 5, Burst: 10, MaxInFlight: 4}})
			buf := make([]byte, 0, 64)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := range b.N {
				num := strconv.Itoa(i)
				buf = append(buf[:0], "dev-"...)
				for len(buf)+len(num) < idLen {
					buf = append(buf, '0')
				}
				buf = append(buf, num...)
				l.Allow(string(buf), "anomaly") // the string is garbage once Allow copied it
			}
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			if l.Len() != b.N {
				b.Fatalf("Len = %d, want %d", l.Len(), b.N)
			}
			b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "bytes/device")
		})
	}
}
