package devicesim

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkVADStream decodes n chunks of one device and checks them: 8000
// samples of standard base64 each, reset on the first only, and a stream
// that has stretches of speech-level energy and stretches of background
// noise, by RMS per 100 ms.
func checkVADStream(t *testing.T, gen Generator, n int) []float64 {
	t.Helper()
	var stream []float64
	for i, b := range inputJSON(t, gen, n) {
		var in AudioInput
		if err := json.Unmarshal(b, &in); err != nil {
			t.Fatal(err)
		}
		if in.Reset != (i == 0) {
			t.Errorf("chunk %d: reset %v", i, in.Reset)
		}
		pcm := strictBase64(t, "pcm16", in.PCM16)
		if len(pcm) != 2*8000 {
			t.Fatalf("chunk %d: %d bytes of PCM, want 8000 samples (500 ms at 16 kHz)", i, len(pcm))
		}
		for j := 0; j < len(pcm); j += 2 {
			stream = append(stream, float64(int16(binary.LittleEndian.Uint16(pcm[j:])))/32768)
		}
	}
	levels := blockLevels(stream, 1600)
	var loud, quiet, longestQuiet, run int
	talkWindows := 0
	for i, db := range levels {
		switch {
		case db > -35:
			loud++
		case db < -45:
			quiet++
		}
		if db < -45 {
			run++
			longestQuiet = max(longestQuiet, run)
		} else {
			run = 0
		}
		if db < -90 {
			t.Fatalf("block %d is digital silence (%.1f dB): want background noise", i, db)
		}
		// A second of talk: most of ten blocks at speech level.
		if i >= 9 {
			n := 0
			for _, d := range levels[i-9 : i+1] {
				if d > -35 {
					n++
				}
			}
			if n >= 7 {
				talkWindows++
			}
		}
	}
	t.Logf("%d blocks of 100 ms: %d at speech level, %d quiet, longest quiet %d, %d windows of a second of talk", len(levels), loud, quiet, longestQuiet, talkWindows)
	if loud < len(levels)/5 || quiet < len(levels)/5 {
		t.Errorf("%d of %d blocks at speech level and %d quiet, want a fifth of each", loud, len(levels), quiet)
	}
	if longestQuiet < 5 {
		t.Errorf("longest quiet stretch %d00 ms, want at least 500 ms", longestQuiet)
	}
	if talkWindows == 0 {
		t.Error("no second of talk")
	}
	return stream
}

// blockLevels is the RMS, in dBFS, of each block of n samples.
func blockLevels(x []float64, n int) []float64 {
	var out []float64
	for i := 0; i+n <= len(x); i += n {
		var s float64
		for _, v := range x[i : i+n] {
			s += v * v
		}
		out = append(out, 10*math.Log10(s/float64(n)+1e-20))
	}
	return out
}

func TestVADInput(t *testing.T) {
	for _, variant := range []string{"default", "synthetic", "missing"} {
		t.Run(variant, func(t *testing.T) {
			f, src := prepareShared(t, "vad", variant)
			switch _, err := os.Stat(defaultEspeak); {
			case variant == "default" && err == nil:
				if src.Fallback || !strings.Contains(src.Description, "speech by espeak-ng") {
					t.Errorf("espeak-ng is at %s, but the source is %+v", defaultEspeak, src)
				}
			case variant == "missing":
				if !src.Fallback || !strings.Contains(src.Description, "espeak-ng is not at") {
					t.Errorf("no espeak-ng, but the source is %+v", src)
				}
			case variant == "synthetic":
				if !src.Fallback || !strings.Contains(src.Description, "synthetic speech-like signal") {
					t.Errorf("synthetic asked for, but the source is %+v", src)
				}
			}
			var first []float64
			for dev := range unlessRace(3, 2) {
				s := checkVADStream(t, f("sim-0001", rand.New(rand.NewPCG(21, uint64(dev)))), 50)
				if dev == 0 {
					first = s
				} else if slicesEqual(s[:16000], first[:16000]) {
					t.Errorf("device %d starts like device 0", dev)
				}
			}
		})
	}
}

func slicesEqual(a, b []float64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

// A chunk is the next stretch of the stream: the chunks of a long-chunk
// device are the chunks of a short-chunk device laid end to end.
func TestVADChunksAreConsecutive(t *testing.T) {
	clips, _, _, err := speech(t.Context(), InputOptions{Synthetic: true})
	if err != nil {
		t.Fatal(err)
	}
	long := newVADStream(clips, 4096, rand.New(rand.NewPCG(1, 2)))
	short := newVADStream(clips, 512, rand.New(rand.NewPCG(1, 2)))
	var a, b []float64
	for range 8 {
		a = append(a, long.read()...)
	}
	for range 64 {
		b = append(b, short.read()...)
	}
	if !slicesEqual(a, b) {
		t.Error("512-sample chunks are not the 4096-sample chunks cut up")
	}
	if long.talkSamples == 0 || long.talkSamples == len(a) {
		t.Errorf("%d of %d samples are talk, want some talk and some quiet", long.talkSamples, len(a))
	}
}

func TestVADAudioChunkOption(t *testing.T) {
	for _, tt := range []struct {
		chunk time.Duration
		limit int
		want  int
	}{
		{32 * time.Millisecond, 0, 512},
		{100*time.Millisecond + 30*time.Microsecond, 0, 1600}, // rounded down to whole samples
		{2 * time.Second, 100000, 32000},
	} {
		f, _, err := PrepareInput(t.Context(), "vad", InputOptions{AudioChunk: tt.chunk, MaxInputSize: tt.limit, Synthetic: true})
		if err != nil {
			t.Fatal(err)
		}
		in := f("d", rand.New(rand.NewPCG(1, 1)))().(AudioInput)
		if got := len(strictBase64(t, "pcm16", in.PCM16)) / 2; got != tt.want {
			t.Errorf("chunk %s: %d samples, want %d", tt.chunk, got, tt.want)
		}
	}
}

// fakeEspeak writes an executable script that stands in for espeak-ng.
func fakeEspeak(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "espeak-ng")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// The espeak-ng path: its WAV on stdout is parsed, resampled to 16 kHz and
// spoken by the devices; when it fails, the default falls back and an
// explicit one is an error that says why.
func TestVADEspeak(t *testing.T) {
	// Three seconds of a 22050 Hz "voice": a 300 Hz tone in two bursts
	// with a pause, written the way espeak-ng --stdout writes (data size
	// unknown).
	var pcm []byte
	for i := range 3 * 22050 {
		var v float64
		if s := float64(i) / 22050; s < 1.2 || s > 1.6 && s < 2.8 {
			v = 0.6 * math.Sin(2*math.Pi*300*s)
		}
		pcm = binary.LittleEndian.AppendUint16(pcm, uint16(int16(v*32767)))
	}
	wav := filepath.Join(t.TempDir(), "voice.wav")
	if err := os.WriteFile(wav, wavFile(wavFormatPCM, 1, 22050, 16, nil, pcm, 0x7ffff000), 0o644); err != nil {
		t.Fatal(err)
	}
	args := filepath.Join(t.TempDir(), "args")
	good := fakeEspeak(t, `echo "$@" >> `+args+`; cat `+wav+"\n")
	f, src, err := PrepareInput(t.Context(), "vad", InputOptions{Espeak: good})
	if err != nil {
		t.Fatal(err)
	}
	if src.Fallback || !strings.Contains(src.Description, "espeak-ng") || !strings.Contains(src.Description, "(12.0 s)") {
		t.Errorf("source %+v, want espeak-ng's 4 voices of 3 s", src)
	}
	called, _ := os.ReadFile(args)
	for _, v := range espeakVoices {
		if !strings.Contains(string(called), "--stdout -v "+v.voice+" -s ") {
			t.Errorf("espeak-ng was not asked for voice %s: %s", v.voice, called)
		}
	}
	clips, err := espeakClips(t.Context(), good)
	if err != nil {
		t.Fatal(err)
	}
	c := clips[0]
	if len(c.samples) != 3*16000 {
		t.Errorf("3 s at 22050 Hz became %d samples, want %d at 16 kHz", len(c.samples), 3*16000)
	}
	if got := frequency(c.samples[4000:16000], 16000); math.Abs(got-300) > 2 {
		t.Errorf("the 300 Hz voice came out at %.1f Hz", got)
	}
	var nearPause bool
	for _, p := range c.pauses {
		nearPause = nearPause || (p > 19000 && p < 25600) // in 1.2-1.6 s
	}
	if !nearPause {
		t.Errorf("pauses %v, want one between 1.2 s and 1.6 s", c.pauses)
	}
	if n := c.talkLen(0, 16000); n < 19000 || n > 25600 {
		t.Errorf("a stretch from 0 wanting 1 s runs %d samples, want it to end in the pause", n)
	}
	checkVADStream(t, f("d", rand.New(rand.NewPCG(2, 2))), 60)

	for _, tt := range []struct{ name, script, want string }{
		{"fails", "echo 'no voice en+f3' >&2; exit 3\n", "exit status 3: no voice en+f3"},
		{"not a WAV", "echo hello\n", "not a WAV file"},
		{"no output", "cat " + filepath.Join(t.TempDir(), "x") + " 2>/dev/null; exit 0\n", "not a WAV file"},
	} {
		bad := fakeEspeak(t, tt.script)
		if _, _, err := PrepareInput(t.Context(), "vad", InputOptions{Espeak: bad}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s, given: err = %v, want one saying %q", tt.name, err, tt.want)
		}
		_, src, err := PrepareInput(t.Context(), "vad", InputOptions{defaultEspeak: bad})
		if err != nil || !src.Fallback || !strings.Contains(src.Description, tt.want) {
			t.Errorf("%s, as the default: %+v, %v; want the synthetic fallback saying %q", tt.name, src, err, tt.want)
		}
	}
}
