package devicesim

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
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

// DefaultMaxInputSize is the default of InputOptions.MaxInputSize: the
// largest "input" JSON an audio or image generator makes, 60 KiB, so that a
// whole request stays under the service's default mqtt.max_request_size of
// 64 KiB.
const DefaultMaxInputSize = 60 << 10

// InputOptions shape the inputs of the models that take audio or images
// (vad, ocr, detect). A zero field takes its default; the anomaly model uses
// none of them.
type InputOptions struct {
	// AudioChunk is the audio each vad request carries, the next stretch of
	// the device's stream (default 500 ms, 8000 samples at 16 kHz). It is
	// rounded down to whole samples and must be at least 32 ms (one Silero
	// frame) and fit MaxInputSize (about 1.4 s at the default).
	AudioChunk time.Duration
	// Espeak is the espeak-ng binary that speaks the vad audio (default
	// /usr/bin/espeak-ng, Debian package espeak-ng). When the default is
	// missing or fails, vad sends a synthetic speech-like signal instead and
	// the Report's Inputs says so; a path given here that fails is an error.
	Espeak string
	// PhotoDir is a directory whose *.jpg photos the detect cameras show
	// (default /usr/share/darknet/data, Debian package darknet: dog, person,
	// horses, eagle, giraffe, kite, scream). When the default has none,
	// detect sends synthetic frames and the Report's Inputs says so; a
	// directory given here without a readable JPEG is an error.
	PhotoDir string
	// Synthetic makes vad and detect use their synthetic stand-ins even when
	// espeak-ng and the photos are there, and ocr the embedded Go fonts
	// rather than DejaVu Sans: the same inputs on every machine.
	Synthetic bool
	// FrameSize is the longest side of a detect frame, in pixels (default
	// 640; photos are never upscaled). Frames are shrunk further when they
	// would not fit MaxInputSize.
	FrameSize int
	// OCRWidth is the width of the ocr images, in pixels, between 160 and
	// 1920; the height is about a quarter of it (96 px at 320, 160 px at
	// 640). 0 (the default) lets each device pick a width in [320, 640].
	OCRWidth int
	// MaxInputSize is the largest input, in bytes of JSON, that an audio or
	// image generator makes (default DefaultMaxInputSize, 60 KiB). Images
	// are re-encoded at a lower JPEG quality or size to fit. Raising it past
	// about 63 KiB needs the service's --max-request-size raised as well, or
	// requests are answered 413 payload_too_large.
	MaxInputSize int
	// Logger gets a Warn when a synthetic stand-in replaces the real data;
	// nil = discard.
	Logger *slog.Logger

	// Defaults of Espeak and PhotoDir, and where the DejaVu fonts are,
	// replaced by tests to exercise the fallbacks of a machine without
	// espeak-ng, darknet or fonts-dejavu-core.
	defaultEspeak, defaultPhotoDir, fontDir string
}

func (o *InputOptions) setDefaults() {
	o.AudioChunk = cmp.Or(o.AudioChunk, defaultAudioChunk)
	o.FrameSize = cmp.Or(o.FrameSize, defaultFrameSize)
	o.MaxInputSize = cmp.Or(o.MaxInputSize, DefaultMaxInputSize)
	o.defaultEspeak = cmp.Or(o.defaultEspeak, defaultEspeak)
	o.defaultPhotoDir = cmp.Or(o.defaultPhotoDir, defaultPhotoDir)
	o.fontDir = cmp.Or(o.fontDir, defaultFontDir)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func (o *InputOptions) validate() error {
	switch {
	case o.AudioChunk < minAudioChunk:
		return fmt.Errorf("audio chunk must be at least %s (one 512-sample frame at 16 kHz), got %s", minAudioChunk, o.AudioChunk)
	case o.FrameSize < 32 || o.FrameSize > 4096:
		return fmt.Errorf("frame size must be between 32 and 4096 pixels, got %d", o.FrameSize)
	case o.OCRWidth != 0 && (o.OCRWidth < 160 || o.OCRWidth > 1920):
		return fmt.Errorf("ocr width must be between 160 and 1920 pixels (0 = per device between 320 and 640), got %d", o.OCRWidth)
	case o.MaxInputSize < 4096:
		return fmt.Errorf("max input size must be at least 4096 bytes, got %d", o.MaxInputSize)
	}
	return nil
}

// InputSource says what a model's inputs are made from.
type InputSource struct {
	// Description is one line for the report, such as "speech by
	// espeak-ng (4 voices, 61.3 s), 500 ms chunks" or, for a fallback,
	// what stands in and why.
	Description string
	// Fallback is true when a synthetic stand-in replaces real data that is
	// missing (espeak-ng, the darknet photos); Description says why.
	Fallback bool
}

// inputModel prepares, once per run, what the generators of one model's
// devices share (synthesised speech, encoded frames, fonts) and returns the
// per-device InputFunc.
type inputModel func(ctx context.Context, o InputOptions) (InputFunc, InputSource, error)

// inputs maps a model name to the input generator the simulator has for it.
//
// To add a model, write an inputModel in its own file (inputs_<model>.go)
// that produces what the model's input schema asks for, from data the
// simulator makes itself or reads from a path named in InputOptions, and add
// it here.
var inputs = map[string]inputModel{
	"anomaly": func(context.Context, InputOptions) (InputFunc, InputSource, error) {
		return anomalyInput, InputSource{Description: "synthetic sensor readings (temp, humidity, vibration) with spikes, stuck values and level shifts"}, nil
	},
	"vad":    vadInputs,    // 16 kHz speech and silence, one chunk of the device's stream per request
	"ocr":    ocrInputs,    // meter and display images showing a changing reading
	"detect": detectInputs, // camera frames (JPEG)
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

// Input returns the input generator for model with the default
// InputOptions, or an error naming the models the simulator can generate
// inputs for. It prepares the model's shared data, as PrepareInput does.
func Input(model string) (InputFunc, error) {
	f, _, err := PrepareInput(context.Background(), model, InputOptions{})
	return f, err
}

// PrepareInput prepares, once, what the input generators of model's devices
// share (it runs espeak-ng, decodes and re-encodes photos: up to a second or
// two) and returns the per-device InputFunc and where the inputs come from.
// It fails on an unknown model (the error names those the simulator knows),
// on invalid options, on a path given in opts that does not work, and when
// ctx ends; missing default data (espeak-ng, the darknet photos) is not an
// error but a fallback that the InputSource reports.
func PrepareInput(ctx context.Context, model string, opts InputOptions) (InputFunc, InputSource, error) {
	prepare, ok := inputs[model]
	if !ok {
		return nil, InputSource{}, fmt.Errorf("the simulator cannot generate inputs for model %q; it can for: %s", model, strings.Join(InputModels(), ", "))
	}
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, InputSource{}, fmt.Errorf("inputs of %s: %w", model, err)
	}
	f, src, err := prepare(ctx, opts)
	if err != nil {
		return nil, InputSource{}, fmt.Errorf("inputs of %s: %w", model, err)
	}
	if src.Fallback {
		opts.Logger.Warn("using synthetic inputs", "model", model, "inputs", src.Description)
	}
	return f, src, nil
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
