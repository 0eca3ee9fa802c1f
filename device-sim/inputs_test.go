package devicesim

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestInputUnknownModel(t *testing.T) {
	_, err := Input("nosuchmodel")
	if err == nil || !strings.Contains(err.Error(), `"nosuchmodel"`) || !strings.Contains(err.Error(), "anomaly, detect, ocr, vad") {
		t.Fatalf("Input(nosuchmodel) err = %v", err)
	}
	if f, err := Input("anomaly"); err != nil || f == nil {
		t.Fatalf("Input(anomaly) = %v, %v", f, err)
	}
}

func TestAnomalyInputDeterministic(t *testing.T) {
	gen := func(seed uint64) []AnomalySample {
		d := newAnomalyDevice(rand.New(rand.NewPCG(seed, 1)), fixedClock)
		out := make([]AnomalySample, 200)
		for i := range out {
			out[i] = d.sample()
		}
		return out
	}
	if a, b := gen(3), gen(3); !reflect.DeepEqual(a, b) {
		t.Error("same seed, different inputs")
	}
	if a, b := gen(3), gen(4); reflect.DeepEqual(a, b) {
		t.Error("different seeds, same inputs")
	}
}

func TestAnomalyInputIsRealistic(t *testing.T) {
	sensorsSeen := map[int]int{}
	for dev := range 200 {
		d := newAnomalyDevice(rand.New(rand.NewPCG(11, uint64(dev))), fixedClock)
		n := len(d.sensors)
		sensorsSeen[n]++
		names := map[string]bool{}
		for _, s := range d.sensors {
			if names[s.kind.name] {
				t.Fatalf("device %d has two %s sensors", dev, s.kind.name)
			}
			names[s.kind.name] = true
		}
	}
	for n := 1; n <= 3; n++ {
		if sensorsSeen[n] == 0 {
			t.Errorf("no device with %d sensors in 200: %v", n, sensorsSeen)
		}
	}

	// One device with all three sensors, over 10 simulated days.
	var d *anomalyDevice
	for i := uint64(0); d == nil || len(d.sensors) < 3; i++ {
		d = newAnomalyDevice(rand.New(rand.NewPCG(5, i)), time.Now)
	}
	tempStart := d.sensorNamed("temp").t
	series := map[string][]float64{}
	lastTS := map[string]int64{}
	for range 3 * 1440 * 10 {
		s := d.sample()
		b, err := json.Marshal(s)
		if err != nil || !strings.HasPrefix(string(b), `{"sensor":"`) {
			t.Fatalf("sample %v encodes as %s, %v", s, b, err)
		}
		if s.TS <= lastTS[s.Sensor] {
			t.Fatalf("%s: ts %d after %d, want strictly increasing", s.Sensor, s.TS, lastTS[s.Sensor])
		}
		lastTS[s.Sensor] = s.TS
		series[s.Sensor] = append(series[s.Sensor], s.Value)
	}
	ranges := map[string][2]float64{"temp": {10, 35}, "humidity": {15, 80}, "vibration": {0, 2}}
	for name, xs := range series {
		if len(xs) != 14400 {
			t.Errorf("%s: %d samples, want round-robin 14400", name, len(xs))
		}
		lo, hi := ranges[name][0], ranges[name][1]
		var bad int
		for _, x := range xs {
			if math.IsNaN(x) || x < lo || x > hi {
				bad++
			}
		}
		// Level shifts add up over 10 days; nearly all readings stay plausible.
		if bad > len(xs)/10 {
			t.Errorf("%s: %d of %d readings outside [%g, %g]", name, bad, len(xs), lo, hi)
		}
	}

	// The daily cycle: temperature is warmer in the afternoon than at night.
	var warm, cold float64
	for i, x := range series["temp"][:1440] {
		at := tempStart.Add(anomalySamplePeriod * time.Duration(i))
		hour := float64(at.Hour()) + float64(at.Minute())/60
		switch {
		case hour >= 13 && hour < 17:
			warm += x / 240
		case hour >= 1 && hour < 5:
			cold += x / 240
		}
	}
	if warm-cold < 3 {
		t.Errorf("afternoon mean %.2f °C, night mean %.2f °C: no daily cycle", warm, cold)
	}

	// Faults happen, and stuck values show as long runs of one value.
	for _, s := range d.sensors {
		if s.spikes == 0 || s.stucks == 0 || s.shifts == 0 {
			t.Errorf("%s over 10 days: %d spikes, %d stuck, %d level shifts; want some of each", s.kind.name, s.spikes, s.stucks, s.shifts)
		}
		xs := series[s.kind.name]
		longest, run := 0, 1
		for i := 1; i < len(xs); i++ {
			if xs[i] == xs[i-1] {
				run++
			} else {
				run = 1
			}
			longest = max(longest, run)
		}
		if longest < 15 {
			t.Errorf("%s: longest run of one value %d, want a stuck stretch of >= 15", s.kind.name, longest)
		}
	}
}

func (d *anomalyDevice) sensorNamed(name string) *anomalySensor {
	for _, s := range d.sensors {
		if s.kind.name == name {
			return s
		}
	}
	return nil
}

// fixedClock is a real clock that has stopped, for deterministic inputs.
func fixedClock() time.Time { return time.UnixMilli(1_732_500_000_000) }
