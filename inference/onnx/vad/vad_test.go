package vad

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

const sentence = "the quick brown fox jumps over the lazy dog"

// spoken returns the first and last sample of the 10 ms windows of s whose
// RMS is over -60 dBFS: where the voice is (espeak-ng's pauses are near
// digital silence, below -90 dBFS).
func spoken(s []int16) (first, last int) {
	const win = SampleRate / 100
	first, last = -1, -1
	for i := 0; i+win <= len(s); i += win {
		var e float64
		for _, x := range s[i : i+win] {
			e += float64(x) * float64(x)
		}
		if math.Sqrt(e/win) > 0.001*32768 {
			if first < 0 {
				first = i
			}
			last = i + win
		}
	}
	return first, last
}

func concat(parts ...[]int16) []int16 {
	var out []int16
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func above(frames []float64, threshold float64) int {
	n := 0
	for _, p := range frames {
		if p >= threshold {
			n++
		}
	}
	return n
}

func TestDescribeAndInfo(t *testing.T) {
	d := Describe()
	if d.Name != "vad" || d.License != "MIT" || d.Cost < 1 || d.Streaming ||
		d.Source != "npm @ricky0123/vad-web@0.0.31 package/dist/silero_vad_v5.onnx" || d.Checksum != "" {
		t.Errorf("Describe() = %+v", d)
	}
	for name, s := range map[string]json.RawMessage{"input": d.Input, "output": d.Output} {
		var doc map[string]any
		if err := json.Unmarshal(s, &doc); err != nil {
			t.Fatalf("%s schema: %v", name, err)
		}
	}
	if !strings.Contains(string(d.Input), `"maxItems": 960000`) {
		t.Errorf("input schema does not state the default limit: %s", d.Input)
	}

	m := newModel(t, Config{MaxSamples: 32000})
	info := m.Info()
	if info.Name != "vad" || info.Runtime == "" || !strings.HasPrefix(info.Runtime, "onnxruntime ") || info.WarmLatencyMS <= 0 {
		t.Errorf("Info() = %+v", info)
	}
	// The sha256 of the file loaded, as pinned in models.lock.
	if info.Checksum != "2623a2953f6ff3d2c1e61740c6cdb7168133479b267dfef114a4a3cc5bdd788f" {
		t.Errorf("checksum %s", info.Checksum)
	}
	if !strings.Contains(string(info.Input), `"maxItems": 32000`) || !strings.Contains(string(info.Input), "2 s") {
		t.Errorf("input schema does not state the configured limit: %s", info.Input)
	}
	var reg inference.Registry
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(reg.Catalog()); err != nil {
		t.Fatalf("catalog does not encode: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	newModel(t, Config{}) // skips without the runtime
	if _, err := New(Config{Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "make models") {
		t.Errorf("New in an empty dir: %v", err)
	}
}

// TestSpeech runs real synthesised speech through the model: most frames
// are speech, and the segment lies on the voice.
func TestSpeech(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	first, last := spoken(sp)
	r := run(t, m, "d", sp, "")
	if len(r.Frames) != len(sp)/FrameSamples {
		t.Fatalf("%d frames for %d samples", len(r.Frames), len(sp))
	}
	if n := above(r.Frames, 0.5); n < len(r.Frames)/2 {
		t.Errorf("only %d of %d frames of speech are over 0.5: %v", n, len(r.Frames), r.Frames)
	}
	if !r.Speech || len(r.Segments) == 0 {
		t.Fatalf("no speech segment: %+v", r)
	}
	// Bounds inside the voice, give or take the padding and two frames (the
	// model's probability falls a frame or so after the voice).
	slack := DefaultParams.PadMS + 2*FrameMS
	for _, s := range r.Segments {
		if s.StartMS < ms(int64(first))-slack || s.EndMS > ms(int64(last))+slack || s.EndMS <= s.StartMS {
			t.Errorf("segment %+v outside the voice [%v, %v] ms", s, ms(int64(first)), ms(int64(last)))
		}
	}
	var total float64
	for _, s := range r.Segments {
		total += s.EndMS - s.StartMS
	}
	if voice := ms(int64(last - first)); total < voice/2 {
		t.Errorf("segments cover %v ms of %v ms of voice: %+v", total, voice, r.Segments)
	}
}

// TestNotSpeech: digital silence, a pure tone and white noise have no
// speech frame and no segment.
func TestNotSpeech(t *testing.T) {
	m := newModel(t, Config{})
	for name, s := range map[string][]int16{
		"silence":      make([]int16, 3*SampleRate),
		"tone 440 Hz":  tone(3*SampleRate, 440, 0.5),
		"white noise":  whiteNoise(3*SampleRate, 0.3, 1),
		"loud noise":   whiteNoise(3*SampleRate, 0.9, 2),
		"quiet noise":  whiteNoise(3*SampleRate, 0.01, 3),
		"tone 1000 Hz": tone(3*SampleRate, 1000, 0.9),
	} {
		r := run(t, m, name, s, "")
		if len(r.Frames) != 93 {
			t.Errorf("%s: %d frames", name, len(r.Frames))
		}
		if n := above(r.Frames, 0.5); n > 0 || r.Speech || len(r.Segments) > 0 {
			t.Errorf("%s: %d frames over 0.5, segments %+v: %v", name, n, r.Segments, r.Frames)
		}
	}
}

// TestSoxNoise is white noise made by sox rather than by the test.
func TestSoxNoise(t *testing.T) {
	m := newModel(t, Config{})
	sox := tool(t, "sox")
	wav := t.TempDir() + "/noise.wav"
	if out, err := execCommand(sox, "-n", "-r", "16000", "-c", "1", "-b", "16", wav, "synth", "3", "whitenoise", "vol", "0.3"); err != nil {
		t.Fatalf("sox: %v: %s", err, out)
	}
	s := readWAVFile(t, wav)
	r := run(t, m, "d", s, "")
	if n := above(r.Frames, 0.5); n > 0 || r.Speech {
		t.Errorf("%d frames over 0.5, segments %+v", n, r.Segments)
	}
}

// TestPaddedSpeech is speech with 1 s of digital silence on both sides:
// the segment starts after about 1 s and closes in the trailing silence.
func TestPaddedSpeech(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	first, last := spoken(sp)
	pad := make([]int16, SampleRate)
	r := run(t, m, "d", concat(pad, sp, pad), "")
	if len(r.Segments) == 0 {
		t.Fatalf("no segment: %v", r.Frames)
	}
	start, end := r.Segments[0], r.Segments[len(r.Segments)-1]
	voiceStart, voiceEnd := 1000+ms(int64(first)), 1000+ms(int64(last))
	if start.StartMS < voiceStart-DefaultParams.PadMS-2*FrameMS || start.StartMS > voiceStart+200 {
		t.Errorf("speech starts at %v ms, the voice at %v ms", start.StartMS, voiceStart)
	}
	if end.Open || end.EndMS > voiceEnd+DefaultParams.PadMS+2*FrameMS || end.EndMS < voiceEnd-300 {
		t.Errorf("speech ends at %+v, the voice at %v ms", end, voiceEnd)
	}
	// No speech in the leading second.
	if n := above(r.Frames[:1000/FrameMS-1], 0.5); n > 0 {
		t.Errorf("%d frames of the leading silence over 0.5", n)
	}
}

// TestChunkedEqualsWhole streams the same audio in chunks of 1000 samples,
// of random lengths, and as float samples: the probabilities are bit for
// bit those of one whole request, and so are the segments.
func TestChunkedEqualsWhole(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	pad := make([]int16, SampleRate)
	// speech, a pause, speech again, and no trailing silence: the last
	// segment stays open.
	audio := concat(pad, sp, pad, sp[:len(sp)/2])
	whole := run(t, m, "whole", audio, "")
	if len(whole.Segments) < 2 || !whole.Segments[len(whole.Segments)-1].Open {
		t.Fatalf("want closed segments then an open one, got %+v", whole.Segments)
	}

	r := rand.New(rand.NewPCG(1, 2))
	sizes := map[string]func() int{
		"1000":    func() int { return 1000 },
		"512":     func() int { return 512 },
		"random":  func() int { return r.IntN(3000) },
		"tiny":    func() int { return 1 + r.IntN(40) },
		"samples": func() int { return 4000 },
	}
	for name, size := range sizes {
		t.Run(name, func(t *testing.T) {
			var probs []float32
			var segs []Segment
			var lastOpen *Segment
			pos := 0
			for pos < len(audio) {
				n := min(size(), len(audio)-pos)
				var res Result
				if name == "samples" {
					res = runFloats(t, m, name, audio[pos:pos+n])
				} else {
					res = run(t, m, name, audio[pos:pos+n], "")
				}
				if res.OffsetMS != ms(int64(pos)) || res.DurationMS != ms(int64(n)) {
					t.Fatalf("chunk at %d: offset %v ms, duration %v ms", pos, res.OffsetMS, res.DurationMS)
				}
				if want := ms(int64(len(probs)) * FrameSamples); res.FramesStartMS != want {
					t.Fatalf("chunk at %d: frames start %v ms, want %v", pos, res.FramesStartMS, want)
				}
				if got := ms(int64(len(probs)+len(res.probs))*FrameSamples) + res.PendingMS; got != ms(int64(pos+n)) {
					t.Fatalf("chunk at %d: frames and pending end at %v ms, want %v", pos, got, ms(int64(pos+n)))
				}
				probs = append(probs, res.probs...)
				lastOpen = nil
				for _, s := range res.Segments {
					if s.Open {
						lastOpen = &s
					} else {
						segs = append(segs, s)
					}
				}
				if res.Speech != (len(res.Segments) > 0) {
					t.Fatalf("speech %v with segments %+v", res.Speech, res.Segments)
				}
				pos += n
			}
			if lastOpen != nil {
				segs = append(segs, *lastOpen)
			}
			if !slices.Equal(probs, whole.probs) {
				t.Errorf("chunked probabilities differ from whole:\n%v\n%v", probs, whole.probs)
			}
			if !slices.Equal(segs, whole.Segments) {
				t.Errorf("chunked segments %+v, whole %+v", segs, whole.Segments)
			}
		})
	}
}

// runFloats sends samples as input.samples floats.
func runFloats(tb testing.TB, m *Model, device string, s []int16) Result {
	tb.Helper()
	var b strings.Builder
	b.WriteString(`{"sample_rate": 16000, "samples": [`)
	for i, x := range s {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatFloat(float64(x)/32768, 'g', -1, 64))
	}
	b.WriteString("]}")
	out, err := m.Infer(context.Background(), inference.Request{Device: device, Input: json.RawMessage(b.String())})
	if err != nil {
		tb.Fatal(err)
	}
	return out.(Result)
}

// TestOpenSegment: speech that runs to the end of a chunk is reported open
// up to the end of the audio, and closed, with the same start, once the
// silence after it has lasted min_silence_ms.
func TestOpenSegment(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	first, _ := spoken(sp)
	r1 := run(t, m, "d", sp[:first+SampleRate], "")
	if len(r1.Segments) == 0 {
		t.Fatalf("no segment in %v", r1.Frames)
	}
	open := r1.Segments[len(r1.Segments)-1]
	if !open.Open || open.EndMS != r1.OffsetMS+r1.DurationMS {
		t.Fatalf("last segment %+v, want open to %v ms", open, r1.OffsetMS+r1.DurationMS)
	}
	r2 := run(t, m, "d", concat(sp[first+SampleRate:], make([]int16, SampleRate)), "")
	var closed *Segment
	for i, s := range r2.Segments {
		if s.StartMS == open.StartMS {
			closed = &r2.Segments[i]
		}
	}
	if closed == nil || closed.Open || closed.EndMS <= open.EndMS {
		t.Errorf("open segment %+v not closed later: %+v", open, r2.Segments)
	}
	// A quiet chunk after the close has no segment.
	if r3 := run(t, m, "d", make([]int16, 4000), ""); r3.Speech || len(r3.Segments) > 0 {
		t.Errorf("silence after speech: %+v", r3)
	}
}

// TestParams: params change the segments, not the frames.
func TestParams(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	audio := concat(make([]int16, SampleRate/2), sp, make([]int16, SampleRate))
	def := run(t, m, "a", audio, "")
	long := run(t, m, "b", audio, `{"min_speech_ms": 10000}`)
	if !slices.Equal(def.probs, long.probs) {
		t.Error("params changed the probabilities")
	}
	if len(long.Segments) != 0 {
		t.Errorf("segments shorter than min_speech_ms: %+v", long.Segments)
	}
	nopad := run(t, m, "c", audio, `{"pad_ms": 0, "threshold": 0.5}`)
	for i, s := range nopad.Segments {
		if math.Mod(s.StartMS, FrameMS) != 0 || math.Mod(s.EndMS, FrameMS) != 0 {
			t.Errorf("unpadded segment %+v is not on frame bounds", s)
		}
		if i < len(def.Segments) && def.Segments[i].StartMS != max(0, s.StartMS-30) {
			t.Errorf("padded start %v, unpadded %v", def.Segments[i].StartMS, s.StartMS)
		}
	}
	// A threshold over every probability finds nothing.
	maxp := slices.Max(def.Frames)
	if maxp < 1 {
		high := run(t, m, "e", audio, fmt.Sprintf(`{"threshold": %g}`, maxp+0.001))
		if len(high.Segments) != 0 {
			t.Errorf("threshold over the maximum probability %v found %+v", maxp, high.Segments)
		}
	}
	// Splitting on short pauses gives at least as many segments.
	split := run(t, m, "f", audio, `{"min_silence_ms": 0, "pad_ms": 0}`)
	if len(split.Segments) < len(nopad.Segments) {
		t.Errorf("min_silence_ms 0 gave %d segments, default %d", len(split.Segments), len(nopad.Segments))
	}
}

// TestReset drops the carried stream: the next chunk starts at offset 0 and
// computes what a new device computes.
func TestReset(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	run(t, m, "d", sp[:7777], "")
	fresh := run(t, m, "fresh", sp[7777:20000], "")
	out, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: pcmInput(sp[7777:20000], `,"reset":true`)})
	if err != nil {
		t.Fatal(err)
	}
	r := out.(Result)
	if r.OffsetMS != 0 || !slices.Equal(r.probs, fresh.probs) || !slices.Equal(r.Segments, fresh.Segments) {
		t.Errorf("after reset: offset %v, probs %v, want %v", r.OffsetMS, r.probs, fresh.probs)
	}
}

// TestErrorsKeepState: a rejected or canceled chunk leaves the stream as it
// was, so resending it gives the same answer as if nothing had happened.
func TestErrorsKeepState(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	ref := run(t, m, "ref", sp[:20000], "")

	first := run(t, m, "d", sp[:1000], "")
	for _, in := range []string{`{"pcm16":"AAA*"}`, `{"pcm16":"AAAA"}`, `{"pcm16":"AA"}`, `{"samples":[0.5, 2]}`, `{"samples":[0], "sample_rate": 8000}`} {
		_, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: json.RawMessage(in)})
		if !inference.IsInvalidInput(err) {
			t.Errorf("%s: %v, want InvalidInput", in, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Infer(ctx, inference.Request{Device: "d", Input: pcmInput(sp[1000:20000], "")}); !errors.Is(err, context.Canceled) || inference.IsInvalidInput(err) {
		t.Errorf("canceled: %v", err)
	}
	// Canceled in the middle of the frames.
	ctx, cancel = context.WithCancel(context.Background())
	frames := 0
	st := state{}
	l := DefaultParams.limits()
	cctx := &cancelAfter{Context: ctx, n: 5, cancel: cancel, count: &frames}
	if _, err := m.process(cctx, &st, make([]float32, 20*FrameSamples), &l); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled mid-chunk: %v", err)
	}
	cctx.n, frames = 5, 0
	ctx, cancel = context.WithCancel(context.Background())
	cctx.Context, cctx.cancel = ctx, cancel
	if _, err := m.Infer(cctx, inference.Request{Device: "d", Input: pcmInput(sp[1000:20000], "")}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled mid-chunk through Infer: %v", err)
	}
	r := run(t, m, "d", sp[1000:20000], "")
	if r.OffsetMS != ms(1000) {
		t.Errorf("offset after errors %v ms, want %v", r.OffsetMS, ms(1000))
	}
	if got := append(first.probs, r.probs...); !slices.Equal(got, ref.probs) {
		t.Errorf("probabilities after errors differ:\n%v\n%v", got, ref.probs)
	}
}

// cancelAfter is a context that cancels itself after n calls to Err.
type cancelAfter struct {
	context.Context
	n      int
	cancel context.CancelFunc
	count  *int
}

func (c *cancelAfter) Err() error {
	*c.count++
	if *c.count > c.n {
		c.cancel()
	}
	return c.Context.Err()
}

// TestSameDeviceSerialized sends chunks of one device from many goroutines
// at once: each chunk lands at its own offset, none is lost or doubled.
func TestSameDeviceSerialized(t *testing.T) {
	m := newModel(t, Config{})
	const n = 24
	chunk := whiteNoise(FrameSamples, 0.1, 5)
	offsets := make(chan float64, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			out, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: pcmInput(chunk, "")})
			if err != nil {
				t.Error(err)
				return
			}
			offsets <- out.(Result).OffsetMS
		})
	}
	wg.Wait()
	close(offsets)
	var got []float64
	for o := range offsets {
		got = append(got, o)
	}
	slices.Sort(got)
	for i, o := range got {
		if o != float64(i*FrameMS) {
			t.Fatalf("offsets %v, want 0, 32, ... %d", got, (n-1)*FrameMS)
		}
	}
	if len(got) != n {
		t.Fatalf("%d answers", len(got))
	}
}

// TestDevicesParallel runs the same audio for several devices at once:
// each gets exactly what one device alone gets.
func TestDevicesParallel(t *testing.T) {
	m := newModel(t, Config{})
	sp := speak(t, sentence)
	want := run(t, m, "alone", sp, "")
	var wg sync.WaitGroup
	for d := range 8 {
		wg.Go(func() {
			var probs []float32
			for pos := 0; pos < len(sp); pos += 3000 {
				out, err := m.Infer(context.Background(), inference.Request{Device: fmt.Sprint("d", d), Input: pcmInput(sp[pos:min(pos+3000, len(sp))], "")})
				if err != nil {
					t.Error(err)
					return
				}
				probs = append(probs, out.(Result).probs...)
			}
			if !slices.Equal(probs, want.probs) {
				t.Errorf("device %d: probabilities differ", d)
			}
		})
	}
	wg.Wait()
	if m.Len() != 9 {
		t.Errorf("%d streams, want 9", m.Len())
	}
}

// TestEviction: idle streams go after IdleTTL, the least recently used go
// past MaxStreams, and a device whose stream went starts over at 0.
func TestEviction(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	m := newModel(t, Config{MaxStreams: 3, IdleTTL: time.Minute, Now: clock})
	chunk := make([]int16, 600)

	for _, d := range []string{"a", "b", "c"} {
		run(t, m, d, chunk, "")
		advance(time.Second)
	}
	run(t, m, "a", chunk, "") // a is now the most recent; b the least
	run(t, m, "d", chunk, "") // evicts b
	if m.Len() != 3 {
		t.Fatalf("%d streams, want 3", m.Len())
	}
	if r := run(t, m, "b", chunk, ""); r.OffsetMS != 0 {
		t.Errorf("b was not evicted: offset %v", r.OffsetMS) // and this evicted c
	}
	if r := run(t, m, "a", chunk, ""); r.OffsetMS != ms(2*600) {
		t.Errorf("a lost its stream: offset %v", r.OffsetMS)
	}

	if n := m.EvictIdle(); n != 0 {
		t.Errorf("EvictIdle dropped %d fresh streams", n)
	}
	advance(30 * time.Second)
	run(t, m, "a", chunk, "")
	advance(45 * time.Second)
	if n := m.EvictIdle(); n != 2 || m.Len() != 1 {
		t.Errorf("EvictIdle dropped %d, %d left; want 2 dropped, a left", n, m.Len())
	}
	if r := run(t, m, "a", chunk, ""); r.OffsetMS != ms(4*600) {
		t.Errorf("a lost its stream: offset %v", r.OffsetMS)
	}
}

// TestBusyStreamNotEvicted: a stream held by a request survives eviction, so
// the device's requests stay serialized on one stream.
func TestBusyStreamNotEvicted(t *testing.T) {
	m := newModel(t, Config{MaxStreams: 1})
	s := m.acquire("busy")
	run(t, m, "other", make([]int16, 100), "")
	if n := m.EvictIdle(); n != 0 {
		t.Errorf("EvictIdle dropped %d", n)
	}
	m.mu.Lock()
	held := m.streams["busy"] == s
	m.mu.Unlock()
	if !held {
		t.Fatal("busy stream evicted")
	}
	m.release(s)
	if m.Len() != 1 {
		t.Errorf("%d streams after release, want 1", m.Len())
	}
}

func TestRunStops(t *testing.T) {
	m := newModel(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	cancel()
	<-done
}

func TestClose(t *testing.T) {
	m := newModel(t, Config{})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: pcmInput(make([]int16, 600), "")})
	if err == nil || inference.IsInvalidInput(err) {
		t.Errorf("Infer after Close: %v", err)
	}
}
