package vad

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/mqttinfer/mqttinfer/inference"
)

// input is a decoded, validated input.
type input struct {
	samples []float32 // in [-1, 1]
	reset   bool
}

var inputFields = []string{"pcm16", "samples", "sample_rate", "reset"}

// decodeInput decodes and validates raw, holding at most maxSamples samples,
// before any of it touches a stream.
func decodeInput(raw json.RawMessage, maxSamples int) (input, error) {
	var in input
	fields, err := object(raw, "input", `{"pcm16": "<base64 of int16 little-endian mono 16 kHz samples>"}`)
	if err != nil {
		return in, err
	}
	for k := range fields {
		if !slices.Contains(inputFields, k) {
			return in, inference.InvalidInput("input: unknown field %q (the fields are %s)", clip(k), strings.Join(inputFields, ", "))
		}
	}
	if r, ok := fields["sample_rate"]; ok {
		if k := kind(r); k != "number" {
			return in, inference.InvalidInput("input.sample_rate must be the number %d, got %s", SampleRate, a(k))
		}
		tok := string(bytes.TrimSpace(r))
		if sr, err := strconv.ParseFloat(tok, 64); err != nil || sr != SampleRate {
			return in, inference.InvalidInput("input.sample_rate must be %d: this model takes 16 kHz mono audio only, resample it first (got %s)", SampleRate, clip(tok))
		}
	}
	if r, ok := fields["reset"]; ok {
		switch string(bytes.TrimSpace(r)) {
		case "true":
			in.reset = true
		case "false":
		default:
			return in, inference.InvalidInput("input.reset must be true or false, got %s", a(kind(r)))
		}
	}
	praw, hasPCM := fields["pcm16"]
	sraw, hasSamples := fields["samples"]
	switch {
	case hasPCM && hasSamples:
		return in, inference.InvalidInput("input: give either pcm16 or samples, not both")
	case hasPCM:
		in.samples, err = pcm16(praw, maxSamples)
	case hasSamples:
		in.samples, err = floats(sraw, maxSamples)
	default:
		return in, inference.InvalidInput("input.pcm16 (base64 of int16 little-endian mono 16 kHz samples) or input.samples (numbers in [-1, 1]) is required")
	}
	return in, err
}

// pcm16 decodes raw, a JSON string of base64 (standard alphabet, padded or
// not), as int16 little-endian samples scaled to [-1, 1).
func pcm16(raw []byte, maxSamples int) ([]float32, error) {
	if k := kind(raw); k != "string" {
		return nil, inference.InvalidInput("input.pcm16 must be a base64 string, got %s", a(k))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, inference.InvalidInput("input.pcm16 is not a valid JSON string: %v", err)
	}
	// Reject an oversized chunk before decoding it.
	if len(s) > base64.StdEncoding.EncodedLen(2*maxSamples) {
		return nil, inference.InvalidInput("input.pcm16 holds more than %d samples (%s of 16 kHz audio); send shorter chunks", maxSamples, seconds(maxSamples))
	}
	enc := base64.StdEncoding
	if len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	b := make([]byte, enc.DecodedLen(len(s)))
	n, err := enc.Decode(b, []byte(s))
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, inference.InvalidInput("input.pcm16 is not valid base64 (standard alphabet A-Z a-z 0-9 + /): corrupt at byte %d", int64(ce))
		}
		return nil, inference.InvalidInput("input.pcm16 is not valid base64: %v", err)
	}
	b = b[:n]
	if n%2 != 0 {
		return nil, inference.InvalidInput("input.pcm16 decodes to %d bytes, an odd number: samples are 16-bit (2 bytes each, little-endian)", n)
	}
	if n/2 > maxSamples {
		return nil, inference.InvalidInput("input.pcm16 holds %d samples, more than %d (%s of 16 kHz audio); send shorter chunks", n/2, maxSamples, seconds(maxSamples))
	}
	out := make([]float32, n/2)
	for i := range out {
		out[i] = float32(int16(uint16(b[2*i])|uint16(b[2*i+1])<<8)) / 32768
	}
	return out, nil
}

// floats parses raw, valid JSON, as an array of at most maxSamples numbers in
// [-1, 1]. It scans the array itself: encoding/json would silently turn a
// null element into 0.
func floats(raw []byte, maxSamples int) ([]float32, error) {
	raw = bytes.TrimSpace(raw)
	if k := kind(raw); k != "array" {
		return nil, inference.InvalidInput("input.samples must be an array of numbers in [-1, 1], got %s", a(k))
	}
	out := make([]float32, 0, min(bytes.Count(raw, []byte{','})+1, maxSamples))
	i := 1 // past '['
	for {
		i = skipSpace(raw, i)
		if i >= len(raw) || raw[i] == ']' {
			break
		}
		if len(out) == maxSamples {
			return nil, inference.InvalidInput("input.samples holds more than %d samples (%s of 16 kHz audio); send shorter chunks", maxSamples, seconds(maxSamples))
		}
		if k := kind(raw[i:]); k != "number" {
			return nil, inference.InvalidInput("input.samples[%d] must be a number in [-1, 1], got %s", len(out), a(k))
		}
		j := i
		for j < len(raw) && raw[j] != ',' && raw[j] != ']' && !isSpace(raw[j]) {
			j++
		}
		x, err := strconv.ParseFloat(string(raw[i:j]), 64)
		if err != nil && !(errors.Is(err, strconv.ErrRange) && x == 0) { // underflow to 0 is fine
			return nil, inference.InvalidInput("input.samples[%d] must be a number in [-1, 1], got %s", len(out), clip(string(raw[i:j])))
		}
		if !(x >= -1 && x <= 1) { // also catches NaN
			return nil, inference.InvalidInput("input.samples[%d] is %s, outside [-1, 1]: scale samples to full scale 1 (int16 / 32768)", len(out), clip(string(raw[i:j])))
		}
		out = append(out, float32(x))
		i = skipSpace(raw, j)
		if i < len(raw) && raw[i] == ',' {
			i++
		}
	}
	return out, nil
}

// Params are the speech-segment options of a request ("params"). They shape
// only the segments, never the frame probabilities.
type Params struct {
	// Threshold is the speech probability at or above which a frame starts
	// or continues speech; a segment ends only below max(Threshold-0.15, 0.01).
	Threshold float64 `json:"threshold"`
	// MinSpeechMS is the shortest segment reported, in milliseconds.
	MinSpeechMS float64 `json:"min_speech_ms"`
	// MinSilenceMS is how long the probability must stay low before a
	// segment ends, in milliseconds.
	MinSilenceMS float64 `json:"min_silence_ms"`
	// PadMS widens each segment on both sides, in milliseconds; at most
	// (MinSilenceMS+32)/2 so that padded segments never overlap.
	PadMS float64 `json:"pad_ms"`
}

// DefaultParams are the params of a request that gives none; they are those
// of Silero's reference get_speech_timestamps.
var DefaultParams = Params{Threshold: 0.5, MinSpeechMS: 250, MinSilenceMS: 100, PadMS: 30}

// maxMS bounds the duration params, in milliseconds.
const maxMS = 60000

var paramFields = []string{"threshold", "min_speech_ms", "min_silence_ms", "pad_ms"}

// decodeParams returns DefaultParams overridden by the fields of raw.
func decodeParams(raw json.RawMessage) (Params, error) {
	p := DefaultParams
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || string(raw) == "null" {
		return p, nil
	}
	fields, err := object(raw, "params", `{"threshold": 0.5, "min_speech_ms": 250, "min_silence_ms": 100, "pad_ms": 30}`)
	if err != nil {
		return p, err
	}
	for k, v := range fields {
		var dst *float64
		switch k {
		case "threshold":
			dst = &p.Threshold
		case "min_speech_ms":
			dst = &p.MinSpeechMS
		case "min_silence_ms":
			dst = &p.MinSilenceMS
		case "pad_ms":
			dst = &p.PadMS
		default:
			return p, inference.InvalidInput("params: unknown field %q (the fields are %s)", clip(k), strings.Join(paramFields, ", "))
		}
		if kd := kind(v); kd != "number" {
			return p, inference.InvalidInput("params.%s must be a number, got %s", k, a(kd))
		}
		tok := string(bytes.TrimSpace(v))
		x, err := strconv.ParseFloat(tok, 64)
		if err != nil && !(errors.Is(err, strconv.ErrRange) && x == 0) {
			return p, inference.InvalidInput("params.%s must be a finite number, got %s", k, clip(tok))
		}
		if k == "threshold" {
			if !(x > 0 && x <= 1) {
				return p, inference.InvalidInput("params.threshold must be in (0, 1], got %s", clip(tok))
			}
		} else if !(x >= 0 && x <= maxMS) {
			return p, inference.InvalidInput("params.%s must be in [0, %d] milliseconds, got %s", k, maxMS, clip(tok))
		}
		*dst = x
	}
	// The gap between two segments is at least min_silence_ms + one frame;
	// with at most half of it as padding on each side, padded segments never
	// overlap and a closed segment is final when it is reported.
	if limit := (p.MinSilenceMS + FrameMS) / 2; p.PadMS > limit {
		return p, inference.InvalidInput("params.pad_ms (%g) must be at most (min_silence_ms + %d) / 2 = %g, so that padded segments cannot overlap", p.PadMS, FrameMS, limit)
	}
	return p, nil
}

// object decodes raw as a JSON object. name is the field for messages.
func object(raw json.RawMessage, name, example string) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, inference.InvalidInput("%s is required: a JSON object like %s", name, example)
	}
	if k := kind(raw); k != "object" {
		return nil, inference.InvalidInput("%s must be a JSON object like %s, got %s", name, example, a(k))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, inference.InvalidInput("%s is not valid JSON: %v", name, err)
	}
	return m, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// seconds formats n samples at 16 kHz as a duration for messages.
func seconds(n int) string {
	return strconv.FormatFloat(float64(n)/SampleRate, 'g', -1, 64) + " s"
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// roundProb rounds a probability to 3 decimals for the output.
func roundProb(p float32) float64 { return math.Round(float64(p)*1000) / 1000 }

// kind and a name a JSON value's type in messages (see inference.JSONKind).
var (
	kind = inference.JSONKind
	a    = inference.WithArticle
)
