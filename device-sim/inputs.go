package devicesim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Generator returns the input of a simulated device's next request; the
// result is encoded as the request's "input" JSON. A Generator is called from
// one goroutine only (its device's) and may keep state between calls.
type Generator func() any

// InputFunc builds the Generator of one device from the device id and the
// device's own random source (seeded from Options.Seed and the device's
// index, so a run with the same seed sends the same inputs).
type InputFunc func(device string, rng *rand.Rand) Generator

// inputs maps a model name to the input generator the simulator has for it.
//
// To add a model, write an InputFunc in its own file (inputs_<model>.go)
// that produces what the model's input schema asks for, from data the
// simulator makes itself or reads from a file named in Options, and add it
// here. Planned for the next milestone:
//
//	"vad":    16 kHz mono audio frames of 512 samples (speech and silence)
//	"detect": camera frames (JPEG, base64) with objects in them
//	"ocr":    meter / display images (PNG, base64) showing a reading
var inputs = map[string]InputFunc{
	"anomaly": anomalyInput,
}

// InputModels lists the models the simulator can generate inputs for, sorted.
func InputModels() []string {
	names := make([]string, 0, len(inputs))
	for n := range inputs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Input returns the input generator for model, or an error naming the models
// the simulator can generate inputs for.
func Input(model string) (InputFunc, error) {
	f, ok := inputs[model]
	if !ok {
		return nil, fmt.Errorf("the simulator cannot generate inputs for model %q; it can for: %s", model, strings.Join(InputModels(), ", "))
	}
	return f, nil
}

// AnomalySample is one input of the "anomaly" model: a single reading of one
// sensor of the device. The model keeps a series per device and sensor.
type AnomalySample struct {
	Sensor string  `json:"sensor"`
	Value  float64 `json:"value"`
	// TS is when the reading was sent, in unix milliseconds, strictly
	// increasing per sensor. It is the real clock, not the simulated one,
	// because the model answers a ts that is not later than the series' last
	// one as stale, and a second run with the same device ids must not be.
	TS int64 `json:"ts"`
}

// anomalySamplePeriod is the simulated time between two readings of one
// sensor: one reading per simulated minute, so the daily cycle shows within a
// day's 1440 readings rather than over a real day.
const anomalySamplePeriod = time.Minute

// Fault rates, per reading of one sensor.
const (
	pSpike      = 0.01   // a single reading far off
	pStuck      = 0.003  // the sensor repeats its last reading for a while
	pLevelShift = 0.0015 // the baseline moves for good (recalibration, a door left open, a loose mount)
)

// sensorKind is the physics of one kind of sensor.
type sensorKind struct {
	name string
	// base is the reading at simulated time t (the daily cycle), before
	// noise and faults.
	base func(tod float64) float64
	// noise is the standard deviation of the reading's noise.
	noise float64
	// lo, hi clamp the reading to what the sensor can report.
	lo, hi float64
	// step is the sensor's resolution.
	step float64
}

// dailySine is 1 at 15:00 and −1 at 03:00; tod is the time of day in hours.
func dailySine(tod float64) float64 { return math.Sin(2 * math.Pi * (tod - 9) / 24) }

var sensorKinds = []sensorKind{
	// Indoor temperature in °C: ~21 °C, warmest mid-afternoon.
	{name: "temp", base: func(tod float64) float64 { return 21 + 2.5*dailySine(tod) }, noise: 0.15, lo: -40, hi: 85, step: 0.01},
	// Relative humidity in %: falls as the air warms.
	{name: "humidity", base: func(tod float64) float64 { return 45 - 8*dailySine(tod) }, noise: 0.8, lo: 0, hi: 100, step: 0.1},
	// Vibration RMS in g of a machine that runs 06:00–22:00 and idles at night.
	{name: "vibration", base: func(tod float64) float64 {
		if tod >= 6 && tod < 22 {
			return 0.32
		}
		return 0.04
	}, noise: 0.02, lo: 0, hi: 16, step: 0.001},
}

// anomalySensor is one sensor's state: its simulated clock and its faults.
type anomalySensor struct {
	kind      sensorKind
	t         time.Time // simulated time of the next reading
	lastTS    int64     // unix ms of the last reading sent
	offset    float64   // accumulated level shifts
	stuckLeft int       // readings left to repeat
	last      float64

	// What was injected, for tests.
	spikes, stucks, shifts int
}

// anomalyDevice generates a device's readings, one sensor after the other.
type anomalyDevice struct {
	rng     *rand.Rand
	now     func() time.Time // the real clock, for ts
	sensors []*anomalySensor
	next    int
}

func newAnomalyDevice(rng *rand.Rand, now func() time.Time) *anomalyDevice {
	n := 1 + rng.IntN(3)
	kinds := slices.Clone(sensorKinds)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	// Each device's day starts at a random time, so a fleet is not in lockstep.
	start := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(24 * time.Hour))))
	d := &anomalyDevice{rng: rng, now: now}
	for _, k := range kinds[:n] {
		d.sensors = append(d.sensors, &anomalySensor{kind: k, t: start})
	}
	slices.SortFunc(d.sensors, func(a, b *anomalySensor) int { return strings.Compare(a.kind.name, b.kind.name) })
	return d
}

func anomalyInput(_ string, rng *rand.Rand) Generator {
	d := newAnomalyDevice(rng, time.Now)
	return func() any { return d.sample() }
}

func (d *anomalyDevice) sample() AnomalySample {
	s := d.sensors[d.next]
	d.next = (d.next + 1) % len(d.sensors)
	s.lastTS = max(d.now().UnixMilli(), s.lastTS+1)
	return AnomalySample{Sensor: s.kind.name, Value: s.read(d.rng), TS: s.lastTS}
}

func (s *anomalySensor) read(rng *rand.Rand) float64 {
	tod := float64(s.t.Hour()) + float64(s.t.Minute())/60
	s.t = s.t.Add(anomalySamplePeriod)
	if s.stuckLeft > 0 {
		s.stuckLeft--
		return s.last
	}
	sigma := s.kind.noise
	if rng.Float64() < pLevelShift {
		s.offset += sign(rng) * (4 + 4*rng.Float64()) * sigma
		s.shifts++
	}
	v := s.kind.base(tod) + s.offset + rng.NormFloat64()*sigma
	if rng.Float64() < pSpike {
		v += sign(rng) * (8 + 4*rng.Float64()) * sigma
		s.spikes++
	}
	v = math.Round(v/s.kind.step) * s.kind.step
	v = math.Round(v*1e6) / 1e6 // drop float noise from the step so the JSON stays short
	v = min(max(v, s.kind.lo), s.kind.hi)
	if rng.Float64() < pStuck {
		s.stuckLeft = 15 + rng.IntN(46)
		s.stucks++
	}
	s.last = v
	return v
}

func sign(rng *rand.Rand) float64 {
	if rng.IntN(2) == 0 {
		return -1
	}
	return 1
}
