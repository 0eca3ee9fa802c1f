package devicesim

import (
	"math"
	"sync/atomic"
	"time"
)

// histogram records durations in logarithmic buckets so that a run of any
// length keeps a fixed ~10 KB of memory, safe for concurrent use without locks.
//
// Bucket i covers [histMin·g^i, histMin·g^(i+1)) with g = 1.02, and a
// percentile is reported as the geometric middle of its bucket, so it is
// within ±1% (√1.02 − 1 ≈ 0.995%) of the exact nearest-rank value, clamped
// to the exact observed minimum and maximum. Values below 1 µs fall in the
// first bucket and values above ~1.3 hours in the last (reported as the
// maximum), which only matters for round trips that are not real.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Int64 // ns; overflows only after ~292 years of summed latency
	min    atomic.Int64 // ns, 0 = none yet
	max    atomic.Int64 // ns
}

const (
	histMin     = float64(time.Microsecond)
	histGrowth  = 1.02
	histBuckets = 1120 // histMin·1.02^1120 ≈ 1.3 hours
)

var logGrowth = math.Log(histGrowth)

func bucketOf(d time.Duration) int {
	v := float64(d)
	if v <= histMin {
		return 0
	}
	i := int(math.Log(v/histMin) / logGrowth)
	return min(i, histBuckets-1)
}

// record adds one observation; negative durations count as zero.
func (h *histogram) record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucketOf(d)].Add(1)
	h.n.Add(1)
	h.sum.Add(int64(d))
	for {
		cur := h.max.Load()
		if int64(d) <= cur || h.max.CompareAndSwap(cur, int64(d)) {
			break
		}
	}
	for {
		cur := h.min.Load()
		if (cur != 0 && int64(d) >= cur) || h.min.CompareAndSwap(cur, max(int64(d), 1)) {
			break
		}
	}
}

// quantile returns the nearest-rank q-quantile (0 < q ≤ 1), within ±1%;
// 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			if i == histBuckets-1 {
				return time.Duration(h.max.Load()) // the overflow bucket has no middle
			}
			v := time.Duration(histMin * math.Pow(histGrowth, float64(i)+0.5))
			lo, hi := time.Duration(h.min.Load()), time.Duration(h.max.Load())
			return min(max(v, lo), hi)
		}
	}
	return time.Duration(h.max.Load())
}

// latency summarises the histogram.
func (h *histogram) latency() Latency {
	n := h.n.Load()
	if n == 0 {
		return Latency{}
	}
	return Latency{
		Count: int(n),
		Min:   time.Duration(h.min.Load()),
		Mean:  time.Duration(h.sum.Load() / int64(n)),
		P50:   h.quantile(0.50),
		P90:   h.quantile(0.90),
		P99:   h.quantile(0.99),
		Max:   time.Duration(h.max.Load()),
	}
}
