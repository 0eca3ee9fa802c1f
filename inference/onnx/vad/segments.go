package vad

// Segment is one stretch of speech, in milliseconds of the device's stream,
// padding included.
type Segment struct {
	StartMS float64 `json:"start_ms"`
	EndMS   float64 `json:"end_ms"`
	// Open is true when the speech has not ended by the end of this chunk:
	// EndMS is then the end of the audio received so far, and a later
	// response reports the same segment (same StartMS) again, with its
	// final end, once it closes.
	Open bool `json:"open,omitempty"`
}

// tracker turns frame probabilities into speech segments with the
// hysteresis of Silero's reference get_speech_timestamps (without its
// max_speech_duration split), one frame at a time so that it can carry over
// between the chunks of a stream. Positions are samples of the stream.
type tracker struct {
	triggered bool  // inside speech
	start     int64 // raw start of the current speech
	tempEnd   int64 // first low frame of the current silence, when hasTemp
	hasTemp   bool
	lastEnd   int64 // padded end of the last closed segment
}

// limits are Params in samples.
type limits struct {
	threshold, negThreshold float64
	minSpeech, minSilence   float64
	pad                     int64
}

func (p Params) limits() limits {
	return limits{
		threshold:    p.Threshold,
		negThreshold: max(p.Threshold-0.15, 0.01),
		minSpeech:    p.MinSpeechMS * SampleRate / 1000,
		minSilence:   p.MinSilenceMS * SampleRate / 1000,
		pad:          int64(p.PadMS * SampleRate / 1000),
	}
}

// step takes the probability p of the frame that starts at sample pos and
// returns the segment that this frame closes, if any.
func (t *tracker) step(p float32, pos int64, l *limits) (Segment, bool) {
	prob := float64(p)
	if prob >= l.threshold && t.hasTemp {
		t.hasTemp = false
	}
	if prob >= l.threshold && !t.triggered {
		t.triggered, t.start = true, pos
		return Segment{}, false
	}
	if prob < l.negThreshold && t.triggered {
		if !t.hasTemp {
			t.tempEnd, t.hasTemp = pos, true
		}
		if float64(pos-t.tempEnd) < l.minSilence {
			return Segment{}, false
		}
		start, end := t.start, t.tempEnd
		t.triggered, t.hasTemp = false, false
		if float64(end-start) > l.minSpeech {
			s := Segment{StartMS: ms(t.padStart(start, l)), EndMS: ms(end + l.pad)}
			t.lastEnd = end + l.pad
			return s, true
		}
	}
	return Segment{}, false
}

// open returns the segment still open at sample end (the end of the audio
// received), if it is already longer than the minimum speech.
func (t *tracker) open(end int64, l *limits) (Segment, bool) {
	if !t.triggered || float64(end-t.start) <= l.minSpeech {
		return Segment{}, false
	}
	return Segment{StartMS: ms(t.padStart(t.start, l)), EndMS: ms(end), Open: true}, true
}

// padStart moves start back by the padding, never before the stream's
// start or the previous segment's padded end.
func (t *tracker) padStart(start int64, l *limits) int64 {
	return max(start-l.pad, t.lastEnd, 0)
}

// ms converts a sample position at 16 kHz to milliseconds (exactly: 1/16 is
// a binary fraction).
func ms(samples int64) float64 { return float64(samples) / (SampleRate / 1000) }
