package devicesim

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AudioInput is one input of the "vad" model: the next chunk of the
// device's audio stream. The model carries its state per device, so a
// device's chunks are consecutive audio.
type AudioInput struct {
	// PCM16 is standard, padded base64 of int16 little-endian samples,
	// mono, 16 kHz.
	PCM16 string `json:"pcm16"`
	// Reset is set on a device's first chunk of a run, so that the model
	// starts the stream afresh instead of going on from an earlier run.
	Reset bool `json:"reset,omitempty"`
}

const (
	vadRate           = 16000 // Hz
	defaultAudioChunk = 500 * time.Millisecond
	minAudioChunk     = 32 * time.Millisecond
	defaultEspeak     = "/usr/bin/espeak-ng"
)

// The stream of a vad device alternates between talk and quiet over a low
// background noise, like a microphone in a room.
const (
	talkMin, talkMax   = 1 * vadRate, 3 * vadRate         // samples of one stretch of speech
	quietMin, quietMax = vadRate / 2, 2 * vadRate         // samples of one stretch of silence
	talkOverrun        = vadRate / 2                      // a stretch may run on this far to end in a pause
	fadeLen            = 8 * vadRate / 1000               // raised-cosine fade at a hard cut
	pauseFrame         = 10 * vadRate / 1000              // frame of the pause finder
	pauseMinFrames     = 6                                // a pause is at least 60 ms ...
	pauseLevel         = 0.02                             // ... under this RMS (-34 dB of the clip's peak)
	noiseMinDB         = -62                              // background noise RMS, dBFS
	noiseMaxDB         = -50                              //
	speechPeakMin      = 0.3                              // peak amplitude of a device's speech
	speechPeakMax      = 0.9                              //
	humShare           = 0.3                              // devices that also pick up 50 Hz mains hum
	espeakTimeout      = 20 * time.Second                 // per voice
	synthSpeechSeconds = 24                               // per synthetic voice
	synthSpeechSeed    = 0x5eec4                          // fixed: every run speaks the same synthetic clips
	pcmFullScale       = 32767                            // int16 full scale
	chunkJSONOverhead  = len(`{"pcm16":"","reset":true}`) // what AudioInput adds around the base64
)

// speechText is what espeak-ng says: everyday sentences of different
// lengths, so that the pauses between them vary.
const speechText = "Good morning. The parcel is at the back door, next to the blue bins. " +
	"Could you check the meter in the basement before lunch? " +
	"It was reading a little high yesterday evening, and I don't know why. " +
	"I will call the technician if it keeps going up. " +
	"Remember to close the window when the heating comes on. " +
	"Thanks. See you on Thursday, at half past nine."

// espeakVoices are the voices and speeds (words per minute) of the clips;
// each device listens to one of them.
var espeakVoices = []struct {
	voice string
	speed int
}{
	{"en-us", 150},
	{"en+f3", 165},
	{"en-gb+m3", 135},
	{"en-us+f4", 175},
}

// speechClip is speech at 16 kHz, peak-normalised, with the places where it
// pauses (between words and sentences), where a stretch of talk can end
// without a click.
type speechClip struct {
	name    string
	samples []float32
	pauses  []int // sorted sample offsets in the middle of pauses
}

func newSpeechClip(name string, samples []float32) *speechClip {
	normalizePeak(samples, 1)
	c := &speechClip{name: name, samples: samples, pauses: []int{0}}
	run := 0
	for f := 0; (f+1)*pauseFrame <= len(samples); f++ {
		if rms(samples[f*pauseFrame:(f+1)*pauseFrame]) < pauseLevel {
			run++
			continue
		}
		if run >= pauseMinFrames {
			if mid := (f - run/2) * pauseFrame; mid > 0 {
				c.pauses = append(c.pauses, mid)
			}
		}
		run = 0
	}
	return c
}

// talkLen is the length of a stretch of talk that starts at from and wants
// to last at least want samples: up to the first pause after that, or, when
// no pause comes within talkOverrun, want samples (a hard cut, faded).
func (c *speechClip) talkLen(from, want int) int {
	n := len(c.samples)
	target := from + want
	for k := target / n; k <= target/n+1; k++ {
		for _, p := range c.pauses {
			if q := p + k*n; q >= target {
				if q-target <= talkOverrun {
					return q - from
				}
				return want
			}
		}
	}
	return want
}

// vadInputs prepares the speech every vad device talks from: espeak-ng's
// voices when it is there, a synthetic speech-like signal otherwise.
func vadInputs(ctx context.Context, o InputOptions) (InputFunc, InputSource, error) {
	chunk := int(o.AudioChunk / (time.Second / vadRate)) // whole samples
	if size := base64.StdEncoding.EncodedLen(2*chunk) + chunkJSONOverhead; size > o.MaxInputSize {
		return nil, InputSource{}, fmt.Errorf("an audio chunk of %s is %d bytes of JSON, over the %d-byte input limit: use a shorter chunk, or raise the input limit (and the service's --max-request-size)", o.AudioChunk, size, o.MaxInputSize)
	}
	clips, desc, why, err := speech(ctx, o)
	if err != nil {
		return nil, InputSource{}, err
	}
	var total int
	for _, c := range clips {
		total += len(c.samples)
	}
	src := InputSource{Description: fmt.Sprintf("%s (%.1f s), 1-3 s of talk and 0.5-2 s of quiet over low noise, %s chunks (%d samples at 16 kHz)",
		desc, float64(total)/vadRate, time.Duration(chunk)*time.Second/vadRate, chunk)}
	if why != "" {
		src.Fallback = true
		src.Description += "; in place of espeak-ng: " + why
	}
	return func(_ string, rng *rand.Rand) Generator {
		s := newVADStream(clips, chunk, rng)
		return func() any { return s.next() }
	}, src, nil
}

// speech returns the clips the devices talk from, what they are, and why
// they are synthetic when they are.
func speech(ctx context.Context, o InputOptions) (clips []*speechClip, desc, why string, err error) {
	switch {
	case o.Synthetic:
		why = "synthetic inputs asked for"
	case o.Espeak != "":
		if clips, err = espeakClips(ctx, o.Espeak); err != nil {
			return nil, "", "", err
		}
		return clips, espeakDescription(), "", nil
	default:
		if clips, err = espeakClips(ctx, o.defaultEspeak); err == nil {
			return clips, espeakDescription(), "", nil
		}
		if ctx.Err() != nil {
			return nil, "", "", err
		}
		why = err.Error()
	}
	clips = []*speechClip{
		newSpeechClip("synthetic low voice", synthSpeech(rand.New(rand.NewPCG(synthSpeechSeed, 1)), 115, 1.0, synthSpeechSeconds)),
		newSpeechClip("synthetic high voice", synthSpeech(rand.New(rand.NewPCG(synthSpeechSeed, 2)), 205, 1.17, synthSpeechSeconds)),
	}
	return clips, "synthetic speech-like signal (voiced harmonics through moving formants, syllable-rate envelope, fricative noise; 2 voices)", why, nil
}

func espeakDescription() string {
	names := make([]string, len(espeakVoices))
	for i, v := range espeakVoices {
		names[i] = v.voice + " " + strconv.Itoa(v.speed) + " wpm"
	}
	return "speech by espeak-ng (" + strings.Join(names, ", ") + ")"
}

// espeakClips has espeak-ng at bin say speechText in every voice of
// espeakVoices, at once, and resamples what it says to 16 kHz.
func espeakClips(ctx context.Context, bin string) ([]*speechClip, error) {
	if _, err := exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("espeak-ng is not at %s (apt-get install espeak-ng): %w", bin, err)
	}
	clips := make([]*speechClip, len(espeakVoices))
	errs := make([]error, len(espeakVoices))
	var wg sync.WaitGroup
	for i, v := range espeakVoices {
		wg.Go(func() {
			samples, err := espeak(ctx, bin, v.voice, v.speed)
			if err != nil {
				errs[i] = fmt.Errorf("%s -v %s: %w", bin, v.voice, err)
				return
			}
			clips[i] = newSpeechClip(v.voice, samples)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return clips, nil
}

// espeak runs espeak-ng once and returns its speech at 16 kHz.
func espeak(ctx context.Context, bin, voice string, speed int) ([]float32, error) {
	ctx, cancel := context.WithTimeout(ctx, espeakTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--stdout", "-v", voice, "-s", strconv.Itoa(speed), speechText)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("%w: %s", err, msg)
		}
		return nil, err
	}
	samples, rate, err := parseWAV(stdout.Bytes())
	if err != nil {
		return nil, fmt.Errorf("its output: %w", err)
	}
	if len(samples) < vadRate {
		return nil, fmt.Errorf("it said only %d samples at %d Hz, want a few seconds", len(samples), rate)
	}
	out := resample(samples, rate, vadRate)
	if rms(out) == 0 {
		return nil, errors.New("it said nothing but silence")
	}
	return out, nil
}

// vadStream is one device's microphone: talk and quiet in turn, over noise.
type vadStream struct {
	rng   *rand.Rand
	clip  *speechClip
	chunk int

	gain        float64 // speech peak
	noise       float64 // background noise RMS
	hum         float64 // 50 Hz hum amplitude (0 for most devices)
	humPhase    float64
	talking     bool
	pos         int // next sample of the clip
	stretch     int // length of the current stretch
	done        int // samples of it already sent
	first       bool
	pcm         []byte
	talkSamples int // talk sent so far, for tests
}

func newVADStream(clips []*speechClip, chunk int, rng *rand.Rand) *vadStream {
	s := &vadStream{
		rng:   rng,
		clip:  clips[rng.IntN(len(clips))],
		chunk: chunk,
		gain:  speechPeakMin + (speechPeakMax-speechPeakMin)*rng.Float64(),
		noise: math.Pow(10, (noiseMinDB+(noiseMaxDB-noiseMinDB)*rng.Float64())/20),
		first: true,
		pcm:   make([]byte, 2*chunk),
	}
	if rng.Float64() < humShare {
		s.hum = s.noise * (0.5 + rng.Float64())
	}
	// Start somewhere in the clip, part-way through a stretch, so that a
	// fleet does not talk in chorus.
	s.pos = s.clip.pauses[rng.IntN(len(s.clip.pauses))]
	s.talking = rng.IntN(2) == 0
	s.newStretch()
	s.done = rng.IntN(s.stretch)
	if s.talking {
		s.pos = (s.pos + s.done) % len(s.clip.samples)
	}
	return s
}

// newStretch starts a stretch of talk or quiet, as s.talking says.
func (s *vadStream) newStretch() {
	s.done = 0
	if s.talking {
		s.stretch = s.clip.talkLen(s.pos, talkMin+s.rng.IntN(talkMax-talkMin+1))
	} else {
		s.stretch = quietMin + s.rng.IntN(quietMax-quietMin+1)
	}
}

// next returns the device's next chunk.
func (s *vadStream) next() AudioInput {
	samples := s.read()
	for i, v := range samples {
		binary.LittleEndian.PutUint16(s.pcm[2*i:], uint16(int16(math.Round(max(-1, min(1, v))*pcmFullScale))))
	}
	in := AudioInput{PCM16: base64.StdEncoding.EncodeToString(s.pcm), Reset: s.first}
	s.first = false
	return in
}

// read returns the next chunk as samples in [-1, 1].
func (s *vadStream) read() []float64 {
	out := make([]float64, s.chunk)
	n := len(s.clip.samples)
	for i := range out {
		if s.done >= s.stretch {
			s.talking = !s.talking
			s.newStretch()
		}
		var v float64
		if s.talking {
			v = s.gain * float64(s.clip.samples[s.pos]) * fade(s.done, s.stretch)
			s.pos = (s.pos + 1) % n
			s.talkSamples++
		}
		s.done++
		v += s.noise * s.rng.NormFloat64()
		if s.hum > 0 {
			v += s.hum * math.Sin(s.humPhase)
			s.humPhase = math.Mod(s.humPhase+2*math.Pi*50/vadRate, 2*math.Pi)
		}
		out[i] = v
	}
	return out
}

// fade is the gain of sample i of a stretch of n: a short raised-cosine
// fade in and out, so that a cut mid-word does not click.
func fade(i, n int) float64 {
	d := min(i, n-1-i)
	if d >= fadeLen {
		return 1
	}
	return 0.5 - 0.5*math.Cos(math.Pi*float64(d)/fadeLen)
}

// synthSpeech makes seconds of a speech-like signal at 16 kHz, the stand-in
// for espeak-ng: a glottal pulse train (Rosenberg pulses, differentiated for
// the lips' radiation) at a pitch around f0 that falls over each phrase,
// through three formant resonators that glide from vowel to vowel, shaped
// into syllables of 140-260 ms (about 4-5 a second), with fricative and
// plosive noise before some of them, words 40-120 ms apart and phrases of
// 3-8 words 300-700 ms apart. formants scales the formant frequencies (1.17
// for a higher voice). It has speech's rhythm and spectrum, not its words.
func synthSpeech(rng *rand.Rand, f0, formants float64, seconds int) []float32 {
	const fs = vadRate
	// F1, F2, F3 of English vowels (Peterson & Barney, adult male).
	vowels := [][3]float64{
		{730, 1090, 2440}, // a
		{270, 2290, 3010}, // i
		{300, 870, 2240},  // u
		{530, 1840, 2480}, // e
		{570, 840, 2410},  // o
		{660, 1720, 2410}, // ae
		{440, 1020, 2240}, // uh
		{490, 1350, 1690}, // er
	}
	bandwidths := [3]float64{60, 90, 120}
	out := make([]float32, seconds*fs)

	var (
		res    [3][2]float64 // resonator state (y[n-1], y[n-2])
		form   = vowels[0]
		phase  float64
		prevG  float64
		hpPrev float64
	)
	resonate := func(x float64) float64 {
		for k := range 3 {
			f, bw := form[k]*formants, bandwidths[k]
			c := -math.Exp(-2 * math.Pi * bw / fs)
			b := 2 * math.Exp(-math.Pi*bw/fs) * math.Cos(2*math.Pi*f/fs)
			a := 1 - b - c
			y := a*x + b*res[k][0] + c*res[k][1]
			res[k][1], res[k][0] = res[k][0], y
			x = y
		}
		return x
	}
	glottal := func(ph float64) float64 { // Rosenberg pulse, open 40%, closing 16%
		switch {
		case ph < 0.4:
			return 0.5 * (1 - math.Cos(math.Pi*ph/0.4))
		case ph < 0.56:
			return math.Cos(math.Pi * (ph - 0.4) / 0.32)
		}
		return 0
	}

	i := 0
	for i < len(out) {
		// A phrase.
		words := 3 + rng.IntN(6)
		sylls := 0
		for range words {
			sylls += 1 + rng.IntN(3)
		}
		syll := 0
		for w := 0; w < words && i < len(out); w++ {
			for n := 1 + rng.IntN(3); n > 0 && i < len(out); n-- {
				// A consonant before the vowel, sometimes.
				switch r := rng.Float64(); {
				case r < 0.35: // fricative: s, f, sh
					l := fs * (60 + rng.IntN(40)) / 1000
					amp := 0.05 + 0.1*rng.Float64()
					for j := 0; j < l && i < len(out); j++ {
						x := rng.NormFloat64()
						out[i] += float32(amp * (x - hpPrev) * math.Sin(math.Pi*float64(j)/float64(l)))
						hpPrev = x
						i++
					}
				case r < 0.6: // plosive: a closure, then a burst
					i += fs * (15 + rng.IntN(20)) / 1000
					l := fs * 12 / 1000
					for j := 0; j < l && i < len(out); j++ {
						out[i] += float32(0.2 * rng.NormFloat64() * (1 - float64(j)/float64(l)))
						i++
					}
				}
				// The vowel.
				target := vowels[rng.IntN(len(vowels))]
				from := form
				l := fs * (140 + rng.IntN(120)) / 1000
				stress := 0.6 + 0.4*rng.Float64()
				accent := 1 + 0.2*rng.Float64() - 0.08
				for j := 0; j < l && i < len(out); j++ {
					t := float64(j) / float64(l)
					glide := min(1, float64(j)/float64(fs*40/1000))
					for k := range 3 {
						form[k] = from[k] + (target[k]-from[k])*glide
					}
					// Pitch falls over the phrase, rises on stressed syllables.
					decl := 1.1 - 0.2*(float64(syll)+t)/float64(sylls)
					pitch := f0 * decl * accent * (1 + 0.01*rng.NormFloat64())
					phase += pitch / fs
					if phase >= 1 {
						phase--
					}
					g := glottal(phase)
					env := stress * math.Min(1, math.Min(t/0.15, (1-t)/0.25))
					out[i] += float32(env * resonate(g-prevG) * 8)
					prevG = g
					i++
				}
				syll++
			}
			i += fs * (40 + rng.IntN(80)) / 1000 // between words
		}
		i += fs * (300 + rng.IntN(400)) / 1000 // between phrases
	}
	normalizePeak(out, 1)
	return out
}
