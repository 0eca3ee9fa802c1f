package devicesim

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// The histogram's percentiles are within 1% of the exact nearest-rank ones.
func TestHistogramWithinOnePercent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	xs := make([]time.Duration, 100000)
	for i := range xs {
		// Log-normal around 1 ms with a long tail, as round trips are.
		xs[i] = time.Duration(float64(time.Millisecond) * math.Exp(rng.NormFloat64()*1.2))
		h.record(xs[i])
	}
	slices.Sort(xs)
	for _, q := range []float64{0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1} {
		exact := xs[int(math.Ceil(q*float64(len(xs))))-1]
		got := h.quantile(q)
		if rel := math.Abs(float64(got-exact)) / float64(exact); rel > 0.01 {
			t.Errorf("q%g: histogram %s, exact %s: %.2f%% off", q, got, exact, 100*rel)
		}
	}
	l := h.latency()
	if l.Min != xs[0] || l.Max != xs[len(xs)-1] || l.Count != len(xs) {
		t.Errorf("min %s max %s count %d, want %s %s %d", l.Min, l.Max, l.Count, xs[0], xs[len(xs)-1], len(xs))
	}
}

func TestHistogramEdges(t *testing.T) {
	var h histogram
	if got := h.latency(); got != (Latency{}) {
		t.Errorf("empty histogram: %+v", got)
	}
	h.record(-time.Second) // clock trouble counts as zero
	h.record(0)
	h.record(3 * time.Hour) // past the last bucket
	l := h.latency()
	if l.Count != 3 || l.Max != 3*time.Hour || l.P50 > 1010*time.Nanosecond || l.P99 != 3*time.Hour {
		t.Errorf("edges: %+v", l)
	}
}

func TestHistogramConcurrent(t *testing.T) {
	var h histogram
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				h.record(time.Duration(g*1000+i+1) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	l := h.latency()
	if l.Count != 4000 || l.Min != time.Microsecond || l.Max != 4000*time.Microsecond {
		t.Errorf("concurrent: %+v", l)
	}
}
