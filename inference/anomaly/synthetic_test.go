package anomaly

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// labelled is a synthetic series with the indices of what was injected.
type labelled struct {
	values []float64
	spikes []int    // a single sample off the level
	shifts []int    // first sample at a new level
	drift  [][2]int // [start, end) of ramps
}

// genEvents is Gaussian noise around a level with injected spikes (6–12σ,
// either sign, about 2% of samples) and level shifts (3–8σ, either sign,
// every 200–500 samples). Events keep apart so each label means one thing:
// a shift is followed by 25 samples without spikes, and spikes are at least
// 15 samples apart.
func genEvents(r *rand.Rand, n int) labelled {
	sigma := 0.5 + 2*r.Float64()
	level := 100 * (r.Float64() - 0.5)
	l := labelled{values: make([]float64, n)}
	nextShift := 200 + r.IntN(300)
	quiet := 0
	for i := range n {
		if i == nextShift {
			level += sign(r) * (3 + 5*r.Float64()) * sigma
			l.shifts = append(l.shifts, i)
			nextShift = i + 200 + r.IntN(300)
			quiet = 25
		}
		x := level + sigma*r.NormFloat64()
		if quiet > 0 {
			quiet--
		} else if i >= 40 && i+2 < nextShift && r.Float64() < 0.02 {
			x = level + sign(r)*(6+6*r.Float64())*sigma
			l.spikes = append(l.spikes, i)
			quiet = 15
		}
		l.values[i] = x
	}
	return l
}

// genDrift is Gaussian noise whose level ramps by rate·σ per sample over
// 300-sample stretches, each followed by 200 flat samples.
func genDrift(r *rand.Rand, n int, rate float64) labelled {
	sigma := 0.5 + 2*r.Float64()
	level := 100 * (r.Float64() - 0.5)
	l := labelled{values: make([]float64, n)}
	dir := 1.0
	for i := range n {
		if seg := i % 500; i >= 100 && seg >= 100 && seg < 400 {
			if seg == 100 {
				l.drift = append(l.drift, [2]int{i, min(i+300, n)})
				dir = sign(r)
			}
			level += dir * rate * sigma
		}
		l.values[i] = level + sigma*r.NormFloat64()
	}
	return l
}

func sign(r *rand.Rand) float64 {
	if r.IntN(2) == 0 {
		return -1
	}
	return 1
}

// stream sends values through m for one device and sensor in batches of
// batch values (1 = one request per sample, as a device would), and returns
// the per-sample results.
func stream(t testing.TB, m *Model, device string, values []float64, batch int, params string) []Result {
	t.Helper()
	var out []Result
	for start := 0; start < len(values); start += batch {
		chunk := values[start:min(start+batch, len(values))]
		var in []byte
		if batch == 1 {
			in, _ = json.Marshal(map[string]any{"sensor": "s", "value": chunk[0]})
		} else {
			in, _ = json.Marshal(map[string]any{"sensor": "s", "values": chunk})
		}
		res, err := m.Infer(context.Background(), inference.Request{Device: device, Input: in, Params: json.RawMessage(params)})
		if err != nil {
			t.Fatalf("samples %d..: %v", start, err)
		}
		switch r := res.(type) {
		case Result:
			out = append(out, r)
		case BatchResult:
			out = append(out, r.Results...)
		default:
			t.Fatalf("Infer returned %T", res)
		}
	}
	return out
}

// tally is the confusion of one labelled run.
type tally struct {
	spikes, spikesHit     int
	shifts, shiftsHit     int
	flags, flagsExplained int
}

func (s *tally) add(o tally) {
	s.spikes += o.spikes
	s.spikesHit += o.spikesHit
	s.shifts += o.shifts
	s.shiftsHit += o.shiftsHit
	s.flags += o.flags
	s.flagsExplained += o.flagsExplained
}

func (s tally) spikeRecall() float64 { return float64(s.spikesHit) / float64(s.spikes) }
func (s tally) shiftRecall() float64 { return float64(s.shiftsHit) / float64(s.shifts) }
func (s tally) precision() float64   { return float64(s.flagsExplained) / float64(s.flags) }

func (s tally) String() string {
	return fmt.Sprintf("spike recall %.3f (%d/%d), level-shift recall %.3f (%d/%d), precision %.3f (%d/%d)",
		s.spikeRecall(), s.spikesHit, s.spikes, s.shiftRecall(), s.shiftsHit, s.shifts,
		s.precision(), s.flagsExplained, s.flags)
}

// shiftWithin is how many samples, from the first one at the new level, a
// level shift has to be flagged in.
const shiftWithin = 10

// evaluate scores res against l. A spike counts as found when its own
// sample is flagged as a spike; a level shift when a level_shift is flagged
// within shiftWithin samples from it. A flag is explained (a true positive)
// at a spike or within shiftWithin samples of a shift (the first samples of
// a large shift are rightly flagged as spikes before the CUSUM confirms).
func evaluate(l labelled, res []Result) tally {
	var s tally
	explained := make([]bool, len(res))
	for _, i := range l.spikes {
		s.spikes++
		explained[i] = true
		if res[i].IsAnomaly && res[i].Kind == KindSpike {
			s.spikesHit++
		}
	}
	for _, i := range l.shifts {
		s.shifts++
		hit := false
		for j := i; j < min(i+shiftWithin, len(res)); j++ {
			explained[j] = true
			hit = hit || res[j].Kind == KindLevelShift
		}
		if hit {
			s.shiftsHit++
		}
	}
	for i, r := range res {
		if r.IsAnomaly {
			s.flags++
			if explained[i] {
				s.flagsExplained++
			}
		}
	}
	return s
}

// Measured over these 10 seeds: spike recall 0.995, level-shift recall
// 1.000, precision 0.963. Over seeds 0-99: 0.998, 1.000 and 0.962, the
// worst seed at precision 0.909 and spike recall 0.987.
func TestLabelledSpikesAndShifts(t *testing.T) {
	var all tally
	for seed := range uint64(10) {
		l := genEvents(rand.New(rand.NewPCG(seed, 1)), 6000)
		s := evaluate(l, stream(t, New(Config{}), "d", l.values, 500, ""))
		t.Logf("seed %d: %v", seed, s)
		if s.spikeRecall() < 0.95 || s.shiftRecall() < 0.9 || s.precision() < 0.85 {
			t.Errorf("seed %d: %v; want spike recall >= 0.95, level-shift recall >= 0.9, precision >= 0.85", seed, s)
		}
		all.add(s)
	}
	t.Logf("all seeds: %v", all)
	if all.spikeRecall() < 0.98 || all.shiftRecall() < 0.97 || all.precision() < 0.92 {
		t.Errorf("all seeds: %v; want spike recall >= 0.98, level-shift recall >= 0.97, precision >= 0.92", all)
	}
}

// rates counts flags per decided sample (warm-up excluded).
func rates(res []Result, from, to int) (decided, spikes, shifts int) {
	for _, r := range res[from:to] {
		if r.WarmingUp {
			continue
		}
		decided++
		switch r.Kind {
		case KindSpike:
			spikes++
		case KindLevelShift:
			shifts++
		}
	}
	return
}

// On pure Gaussian noise a two-sided CUSUM with k=0.5, h=5 has an average
// run length of about 470 samples between false alarms; the spike
// detectors add a few in 10⁴. Measured: 0.21% of samples flagged, 0.03% as
// spikes (seeds 0-99: 0.21%, the worst seed 0.44%). With cusum_h 8 no level
// shift and 0.02% spikes.
func TestCleanNoiseFalsePositives(t *testing.T) {
	var decided, spikes, shifts int
	for seed := range uint64(10) {
		l := genDrift(rand.New(rand.NewPCG(seed, 2)), 5000, 0)
		d, sp, sh := rates(stream(t, New(Config{}), "d", l.values, 500, ""), 0, len(l.values))
		decided, spikes, shifts = decided+d, spikes+sp, shifts+sh
	}
	fpr := float64(spikes+shifts) / float64(decided)
	t.Logf("clean noise: %d of %d samples flagged (%.4f): %d spikes, %d level shifts", spikes+shifts, decided, fpr, spikes, shifts)
	if fpr > 0.005 || float64(spikes)/float64(decided) > 0.001 {
		t.Errorf("false positive rate %.4f (spikes %.4f); want <= 0.005 (spikes <= 0.001)", fpr, float64(spikes)/float64(decided))
	}
	// Raising cusum_h trades detection delay for fewer false alarms.
	decided, spikes, shifts = 0, 0, 0
	for seed := range uint64(10) {
		l := genDrift(rand.New(rand.NewPCG(seed, 2)), 5000, 0)
		d, sp, sh := rates(stream(t, New(Config{}), "d", l.values, 500, `{"cusum_h":8}`), 0, len(l.values))
		decided, spikes, shifts = decided+d, spikes+sp, shifts+sh
	}
	t.Logf("clean noise, cusum_h 8: %d spikes, %d level shifts in %d samples", spikes, shifts, decided)
	if float64(spikes+shifts)/float64(decided) > 0.001 {
		t.Errorf("cusum_h 8: %d flags in %d samples; want <= 0.1%%", spikes+shifts, decided)
	}
}

// A slow drift (0.01σ per sample, 3σ over a ramp) is followed by the
// baseline; it must not look like spikes. Measured: 0.04% of the drifting
// samples flagged as spikes, 0.44% as level shifts (seeds 0-99: 0.03% and
// 0.35%).
func TestSlowDrift(t *testing.T) {
	var decided, spikes, shifts int
	for seed := range uint64(10) {
		l := genDrift(rand.New(rand.NewPCG(seed, 2)), 5000, 0.01)
		res := stream(t, New(Config{}), "d", l.values, 500, "")
		for _, d := range l.drift {
			n, sp, sh := rates(res, d[0], d[1])
			decided, spikes, shifts = decided+n, spikes+sp, shifts+sh
		}
	}
	t.Logf("slow drift: %d samples, %d flagged as spikes (%.4f), %d as level shifts (%.4f)",
		decided, spikes, float64(spikes)/float64(decided), shifts, float64(shifts)/float64(decided))
	if float64(spikes)/float64(decided) > 0.002 || float64(spikes+shifts)/float64(decided) > 0.01 {
		t.Errorf("slow drift: %d spikes and %d level shifts in %d samples; want spikes <= 0.2%%, all flags <= 1%%", spikes, shifts, decided)
	}
}

// Smaller shifts than in the labelled series: 2σ is found within 10
// samples nearly always (measured 197/200), 1σ within 40 about 70% of the time.
func TestSmallLevelShift(t *testing.T) {
	for _, c := range []struct {
		size        float64
		within      int
		minFraction float64
	}{{2, 10, 0.95}, {1.5, 40, 0.9}, {1, 40, 0.6}} {
		hits := 0
		const trials = 100
		for seed := range uint64(trials) {
			r := rand.New(rand.NewPCG(seed, 3))
			v := make([]float64, 100+c.within)
			for i := range v {
				v[i] = 10 + r.NormFloat64()
				if i >= 100 {
					v[i] += c.size
				}
			}
			res := stream(t, New(Config{}), "d", v, len(v), "")
			for _, r := range res[100:] {
				if r.Kind == KindLevelShift {
					hits++
					break
				}
			}
		}
		t.Logf("%.1fσ shift: found within %d samples in %d of %d", c.size, c.within, hits, trials)
		if float64(hits)/trials < c.minFraction {
			t.Errorf("%.1fσ shift: found within %d samples in %d of %d; want >= %.0f%%", c.size, c.within, hits, trials, 100*c.minFraction)
		}
	}
}
