package anomaly

import (
	"cmp"
	"math"
	"slices"
	"sync"
)

// Limits and tuning of the detectors.
const (
	// Warmup is the number of samples a series learns from before it
	// decides: results for samples 1..Warmup say warming_up, and the
	// (Warmup+1)th sample is the first one judged.
	Warmup = 19
	// Window is the number of recent samples the median/MAD detector looks at.
	Window = 64
	// MaxBatch is the largest number of values in one batch input.
	MaxBatch = 10000
	// MaxAbsValue bounds the magnitude of a value. No sensor reports more,
	// and the bound keeps every square and sum of squares finite.
	MaxAbsValue = 1e100
)

const (
	alpha          = 0.05   // EWMA weight of a new sample for the mean
	alphaVar       = 0.02   // and for the variance, slower so the scale is steadier
	winsor         = 3.0    // EWMA updates clip a sample to mean ± winsor·std
	cusumClip      = 4.0    // largest |z| one ordinary sample adds to the CUSUM
	cusumSpikeClip = 1.5    // largest |z| a sample flagged as a spike adds
	minRobust      = 16     // fewest unflagged window samples for the mad detector
	madToSigma     = 1.4826 // MAD of a normal distribution × this = its σ
	meanADToSigma  = 1.2533 // mean absolute deviation of a normal × this = its σ
	relFloor       = 1e-9   // scales below relFloor·max(1, |level|) count as that
)

// Detector names, as reported in Result.Method and Result.Methods.
const (
	MethodNone  = "none"
	MethodEWMA  = "ewma_zscore"
	MethodMAD   = "mad"
	MethodCUSUM = "cusum"
)

// Kinds of anomaly, as reported in Result.Kind.
const (
	KindSpike      = "spike"
	KindLevelShift = "level_shift"
)

// Params are the per-request thresholds. The zero value is not valid; use
// DefaultParams.
type Params struct {
	// Z is the EWMA z-score threshold, in standard deviations.
	Z float64 `json:"z"`
	// MAD is the robust z-score threshold, in MAD-derived standard deviations.
	MAD float64 `json:"mad"`
	// CusumH is the CUSUM decision interval, in standard deviations.
	CusumH float64 `json:"cusum_h"`
	// CusumK is the CUSUM allowance per sample, in standard deviations.
	CusumK float64 `json:"cusum_k"`
}

// DefaultParams are the thresholds used when a request sets none.
var DefaultParams = Params{Z: 4, MAD: 5, CusumH: 5, CusumK: 0.5}

// Result is the verdict on one sample.
type Result struct {
	// Sensor is the sensor id; set on single-sample results, left out of
	// the per-sample results of a batch.
	Sensor string `json:"sensor,omitempty"`
	// TS is the sample time in unix milliseconds, when the input gave one.
	TS *int64 `json:"ts,omitempty"`
	// Value is the sample value.
	Value float64 `json:"value"`
	// Score is the largest of Scores; 1 or more means anomalous.
	Score float64 `json:"score"`
	// IsAnomaly is true when at least one detector fired.
	IsAnomaly bool `json:"is_anomaly"`
	// Method is the detector with the highest score among those that fired,
	// or "none".
	Method string `json:"method"`
	// Methods lists every detector that fired, strongest first.
	Methods []string `json:"methods,omitempty"`
	// Kind is "level_shift" when the CUSUM fired, else "spike"; empty when
	// the sample is not anomalous.
	Kind string `json:"kind,omitempty"`
	// Scores are each detector's statistic divided by its threshold.
	Scores Scores `json:"scores"`
	// Baseline is what the sample was compared against (the state before it).
	Baseline Baseline `json:"baseline"`
	// WarmingUp is true while the series has seen fewer than Warmup+1
	// samples; nothing is flagged then.
	WarmingUp bool `json:"warming_up"`
	// Stale is true when the sample's ts was not later than the last one of
	// the series; such a sample is not judged and not learned from.
	Stale bool `json:"stale,omitempty"`
	// N is the number of samples the series has taken in, this one included.
	N int64 `json:"n"`
}

// Scores are the normalised statistics of the three detectors: each is the
// detector's statistic divided by its threshold, so 1 or more means it fired.
type Scores struct {
	// EWMAZ is |x − mean| / std / params.z.
	EWMAZ float64 `json:"ewma_zscore"`
	// MAD is |x − median| / (1.4826·MAD) / params.mad; 0 while the window
	// holds fewer than 16 unflagged samples.
	MAD float64 `json:"mad"`
	// CUSUM is max(S⁺, S⁻) / params.cusum_h after this sample.
	CUSUM float64 `json:"cusum"`
}

// Baseline is the state of a series a sample is judged against.
type Baseline struct {
	// Mean and Std are the EWMA mean and standard deviation (the running
	// mean and sample standard deviation during warm-up).
	Mean float64 `json:"mean"`
	Std  float64 `json:"std"`
	// Median and MAD (raw median absolute deviation, not scaled to σ) are
	// over the N unflagged samples of the robust window.
	Median float64 `json:"median"`
	MAD    float64 `json:"mad"`
	N      int     `json:"n"`
}

// BatchResult is the verdict on a batch of samples of one sensor.
type BatchResult struct {
	Sensor string `json:"sensor"`
	// Results has one entry per input value, in input order.
	Results []Result `json:"results"`
	// Anomalies is the number of results with IsAnomaly set.
	Anomalies int `json:"anomalies"`
}

// series is the state of one (device, sensor) stream. mu guards everything
// below it except the LRU fields, which belong to the Model's lock.
type series struct {
	// LRU bookkeeping, guarded by Model.mu.
	key        seriesKey
	prev, next *series
	lastUsed   int64 // unix nanoseconds

	mu     sync.Mutex
	n      int64
	mean   float64
	vari   float64 // EWMA variance; the Welford sum of squares during warm-up
	up     float64 // CUSUM S⁺
	down   float64 // CUSUM S⁻
	runUp  int     // samples since S⁺ was last 0
	runDn  int     // samples since S⁻ was last 0
	since  int     // samples at the current level since a relearn; 0 when none
	lastTS int64
	hasTS  bool

	// win is a ring of the last Window samples, raw: count of them from
	// slot head on. Bit i of flagged marks win[i] as a spike, left out of
	// the median and MAD. order[:nord] are the slots of the unflagged
	// samples sorted by value, kept up to date on every push so the median
	// and MAD cost a walk, not a sort.
	win     [Window]float64
	flagged uint64
	order   [Window]uint8
	nord    uint8
	head    uint8
	count   uint8
}

// floor is the smallest scale taken for a series at level v, so that a
// perfectly constant series still gives finite scores.
func floor(v float64) float64 { return relFloor * max(1, math.Abs(v)) }

// push appends x to the window, dropping the oldest sample when it is full.
func (s *series) push(x float64, spike bool) {
	i := (s.head + s.count) % Window
	if s.count == Window {
		if s.flagged&(1<<i) == 0 {
			s.unorder(i)
		}
		s.head = (s.head + 1) % Window
	} else {
		s.count++
	}
	s.win[i] = x
	if spike {
		s.flagged |= 1 << i
		return
	}
	s.flagged &^= 1 << i
	// upper bound: the first sorted position holding a larger value
	lo, hi := 0, int(s.nord)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.win[s.order[m]] <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	copy(s.order[lo+1:s.nord+1], s.order[lo:s.nord])
	s.order[lo] = i
	s.nord++
}

// unorder removes slot i from order.
func (s *series) unorder(i uint8) {
	for k := range s.nord {
		if s.order[k] == i {
			copy(s.order[k:s.nord-1], s.order[k+1:s.nord])
			s.nord--
			return
		}
	}
}

// robust returns the median and MAD of the unflagged window samples and how
// many there are.
func (s *series) robust() (median, mad float64, n int) {
	var buf [Window]float64
	n = int(s.nord)
	for k := range n {
		buf[k] = s.win[s.order[k]]
	}
	median, mad = medianMADSorted(buf[:n])
	return median, mad, n
}

// robustScale is the σ estimate from the window: 1.4826·MAD, or, when more
// than half the samples are equal (MAD 0), 1.2533 times the mean absolute
// deviation; never below floor.
func (s *series) robustScale(median, mad float64) float64 {
	sc := madToSigma * mad
	if sc == 0 {
		var sum float64
		for _, i := range s.order[:s.nord] {
			sum += math.Abs(s.win[i] - median)
		}
		if s.nord > 0 {
			sc = meanADToSigma * sum / float64(s.nord)
		}
	}
	return max(sc, floor(median))
}

func (s *series) baseline() Baseline {
	med, mad, n := s.robust()
	b := Baseline{Mean: s.mean, Median: med, MAD: mad, N: n}
	switch {
	case s.n > Warmup:
		b.Std = math.Sqrt(s.vari)
	case s.n >= 2:
		b.Std = math.Sqrt(s.vari / float64(s.n-1))
	}
	return b
}

// start turns the warm-up statistics into the EWMA baseline: the mean and
// variance of the warm-up samples winsorised to median ± 3 robust σ, so a
// spike during warm-up does not inflate the first decisions' scale.
func (s *series) start() {
	med, mad, n := s.robust()
	if n < 2 {
		s.vari = 0
		return
	}
	sc := s.robustScale(med, mad)
	lo, hi := med-winsor*sc, med+winsor*sc
	var sum float64
	for _, i := range s.order[:s.nord] {
		sum += min(max(s.win[i], lo), hi)
	}
	mean := sum / float64(n)
	var ss float64
	for _, i := range s.order[:s.nord] {
		d := min(max(s.win[i], lo), hi) - mean
		ss += d * d
	}
	s.mean = mean
	s.vari = ss / float64(n-1)
}

// step takes sample x into the series and fills out with the verdict.
func (s *series) step(x float64, p *Params, out *Result) {
	out.Value = x
	out.Method = MethodNone
	out.Baseline = s.baseline()
	s.n++
	out.N = s.n
	if s.n <= Warmup {
		out.WarmingUp = true
		d := x - s.mean
		s.mean += d / float64(s.n)
		s.vari += d * (x - s.mean)
		s.push(x, false)
		return
	}
	if s.n == Warmup+1 {
		s.start()
		out.Baseline = s.baseline()
	}
	b := &out.Baseline

	sd := max(b.Std, floor(s.mean))
	z := (x - s.mean) / sd
	out.Scores.EWMAZ = math.Abs(z) / p.Z
	if b.N >= minRobust {
		r := (x - b.Median) / s.robustScale(b.Median, b.MAD)
		out.Scores.MAD = math.Abs(r) / p.MAD
	}
	spike := out.Scores.EWMAZ >= 1 || out.Scores.MAD >= 1

	clip := cusumClip
	if spike {
		clip = cusumSpikeClip
	}
	u := min(max(z, -clip), clip)
	s.up = max(0, s.up+u-p.CusumK)
	s.down = max(0, s.down-u-p.CusumK)
	s.runUp = nextRun(s.runUp, s.up)
	s.runDn = nextRun(s.runDn, s.down)
	out.Scores.CUSUM = max(s.up, s.down) / p.CusumH
	shift := out.Scores.CUSUM >= 1

	s.push(x, spike)
	if shift {
		run := s.runUp
		if s.down > s.up {
			run = s.runDn
		}
		s.relearn(run)
	} else {
		xw := min(max(x, s.mean-winsor*sd), s.mean+winsor*sd)
		d := xw - s.mean
		a := alpha
		if s.since > 0 {
			// Right after a relearn the mean rests on a few samples: it is
			// their running mean until that is steadier than the EWMA.
			s.since++
			a = 1 / float64(s.since)
			if a <= alpha {
				a, s.since = alpha, 0
			}
		}
		s.mean += a * d
		s.vari = (1 - alphaVar) * (s.vari + alphaVar*d*d)
	}

	verdict(out, spike, shift)
}

func nextRun(run int, sum float64) int {
	if sum == 0 {
		return 0
	}
	return min(run+1, Window)
}

// relearn moves the baseline to a new level after a CUSUM alarm: the window
// keeps only the last run samples (those since the shift began, spikes
// among them included), the EWMA mean restarts at their median, and both
// sums reset. The variance is kept: a level shift moves the level, not the
// noise. Until 1/alpha samples are in, the mean is the running mean of the
// samples at the new level, so that one noisy median does not set off a
// second, false alarm.
func (s *series) relearn(run int) {
	keep := uint8(max(1, min(run, int(s.count))))
	s.head = (s.head + s.count - keep) % Window
	s.count = keep
	s.flagged = 0
	s.nord = keep
	for k := range keep {
		s.order[k] = (s.head + k) % Window
	}
	slices.SortFunc(s.order[:keep], func(a, b uint8) int { return cmp.Compare(s.win[a], s.win[b]) })
	med, _, _ := s.robust()
	s.mean = med
	s.up, s.down, s.runUp, s.runDn = 0, 0, 0, 0
	s.since = run
}

// verdict fills the decision fields of out from its scores.
func verdict(out *Result, spike, shift bool) {
	sc := &out.Scores
	out.Score = max(sc.EWMAZ, sc.MAD, sc.CUSUM)
	if !spike && !shift {
		return
	}
	out.IsAnomaly = true
	out.Kind = KindSpike
	if shift {
		out.Kind = KindLevelShift
	}
	type fired struct {
		name  string
		score float64
	}
	var f [3]fired
	n := 0
	for _, c := range [...]fired{{MethodEWMA, sc.EWMAZ}, {MethodMAD, sc.MAD}, {MethodCUSUM, sc.CUSUM}} {
		if c.score >= 1 {
			// insertion by descending score; ties keep detector order
			j := n
			for j > 0 && f[j-1].score < c.score {
				f[j] = f[j-1]
				j--
			}
			f[j] = c
			n++
		}
	}
	out.Methods = make([]string, n)
	for i := range n {
		out.Methods[i] = f[i].name
	}
	out.Method = out.Methods[0]
}

// stale fills out for a sample that is not taken in.
func (s *series) stale(x float64, out *Result) {
	out.Value = x
	out.Method = MethodNone
	out.Stale = true
	out.Baseline = s.baseline()
	out.WarmingUp = s.n < Warmup
	out.N = s.n
}

// medianMAD returns the median of a and the median of the absolute
// deviations from it (each the mean of the two middle values for an even
// length), sorting a.
func medianMAD(a []float64) (median, mad float64) {
	slices.Sort(a)
	return medianMADSorted(a)
}

// medianMADSorted is medianMAD of a sorted a. The deviations are read off
// by merging the two sides of the median outwards, without a second sort.
func medianMADSorted(a []float64) (median, mad float64) {
	n := len(a)
	if n == 0 {
		return 0, 0
	}
	median = (a[(n-1)/2] + a[n/2]) / 2 // |values| <= MaxAbsValue: no overflow
	// a[:n/2] are <= median <= a[n/2:]; walk both outwards in order of deviation.
	i, j := n/2-1, n/2
	var below float64 // the deviation of rank (n-1)/2
	for r := 0; r <= n/2; r++ {
		var d float64
		if j >= n || i >= 0 && median-a[i] <= a[j]-median {
			d = median - a[i]
			i--
		} else {
			d = a[j] - median
			j++
		}
		if r == (n-1)/2 {
			below = d
		}
		mad = d
	}
	return median, (below + mad) / 2
}
