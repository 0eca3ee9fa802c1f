package vad

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// reference is a line-by-line port of the segment logic of Silero's
// get_speech_timestamps (silero-vad utils_vad.py, without
// max_speech_duration_s), working on the whole probability sequence of
// audioLen samples at once.
func reference(probs []float32, audioLen int64, p Params) []Segment {
	const window = FrameSamples
	minSpeech := p.MinSpeechMS * SampleRate / 1000
	minSilence := p.MinSilenceMS * SampleRate / 1000
	pad := int64(p.PadMS * SampleRate / 1000)
	neg := max(p.Threshold-0.15, 0.01)

	type speech struct{ start, end int64 }
	var speeches []speech
	triggered := false
	var cur speech
	var tempEnd int64
	for i, pr := range probs {
		prob := float64(pr)
		if prob >= p.Threshold && tempEnd != 0 {
			tempEnd = 0
		}
		if prob >= p.Threshold && !triggered {
			triggered = true
			cur.start = window * int64(i)
			continue
		}
		if prob < neg && triggered {
			if tempEnd == 0 {
				tempEnd = window * int64(i)
			}
			if float64(window*int64(i)-tempEnd) < minSilence {
				continue
			}
			cur.end = tempEnd
			if float64(cur.end-cur.start) > minSpeech {
				speeches = append(speeches, cur)
			}
			cur, tempEnd, triggered = speech{}, 0, false
			continue
		}
	}
	if triggered && float64(audioLen-cur.start) > minSpeech {
		cur.end = audioLen
		speeches = append(speeches, cur)
	}
	for i := range speeches {
		s := &speeches[i]
		if i == 0 {
			s.start = max(0, s.start-pad)
		}
		if i != len(speeches)-1 {
			gap := speeches[i+1].start - s.end
			if gap < 2*pad {
				s.end += gap / 2
				speeches[i+1].start = max(0, speeches[i+1].start-gap/2)
			} else {
				s.end = min(audioLen, s.end+pad)
				speeches[i+1].start = max(0, speeches[i+1].start-pad)
			}
		} else {
			s.end = min(audioLen, s.end+pad)
		}
	}
	out := make([]Segment, len(speeches))
	for i, s := range speeches {
		out[i] = Segment{StartMS: ms(s.start), EndMS: ms(s.end)}
	}
	return out
}

// streamed runs probs through a tracker as a stream whose audio ends at
// audioLen, and returns the closed segments and the open one at the end,
// with Open cleared for comparison.
func streamed(probs []float32, audioLen int64, p Params) []Segment {
	var t tracker
	l := p.limits()
	var out []Segment
	for i, pr := range probs {
		if s, ok := t.step(pr, int64(i)*FrameSamples, &l); ok {
			out = append(out, s)
		}
	}
	if s, ok := t.open(audioLen, &l); ok {
		s.Open = false
		out = append(out, s)
	}
	return out
}

// TestTrackerMatchesReference checks the streaming hysteresis against the
// whole-sequence reference on random probability sequences with runs of
// speech and silence, for several params.
func TestTrackerMatchesReference(t *testing.T) {
	params := []Params{
		DefaultParams,
		{Threshold: 0.5, MinSpeechMS: 0, MinSilenceMS: 0, PadMS: 0},
		{Threshold: 0.5, MinSpeechMS: 0, MinSilenceMS: 0, PadMS: 16},
		{Threshold: 0.3, MinSpeechMS: 100, MinSilenceMS: 300, PadMS: 100},
		{Threshold: 0.9, MinSpeechMS: 500, MinSilenceMS: 50, PadMS: 41},
		{Threshold: 0.1, MinSpeechMS: 32, MinSilenceMS: 64, PadMS: 48},
	}
	r := rand.New(rand.NewPCG(7, 7))
	segs := 0
	for trial := range 400 {
		p := params[trial%len(params)]
		if _, err := decodeParams(mustJSON(t, p)); err != nil {
			t.Fatalf("params %+v rejected: %v", p, err)
		}
		n := 1 + r.IntN(300)
		probs := make([]float32, n)
		level := r.Float64()
		for i := range probs {
			if r.IntN(8) == 0 { // a new run
				level = r.Float64()
			}
			probs[i] = float32(min(1, max(0, level+0.2*(r.Float64()-0.5))))
		}
		audioLen := int64(n)*FrameSamples + int64(r.IntN(FrameSamples))
		want := reference(probs, audioLen, p)
		got := streamed(probs, audioLen, p)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d, params %+v, probs %v:\n got %v\nwant %v", trial, p, probs, got, want)
		}
		segs += len(want)
	}
	if segs < 200 {
		t.Errorf("only %d segments in all trials: the test does not exercise the tracker", segs)
	}
}
