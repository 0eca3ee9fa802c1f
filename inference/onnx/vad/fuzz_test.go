package vad

import (
	"encoding/json"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// FuzzDecode feeds arbitrary input and params bytes to the decoders. They
// must never panic, must fail only with InvalidInput, and must return at
// most the sample limit of samples in [-1, 1] and params within bounds.
func FuzzDecode(f *testing.F) {
	for _, s := range [][2]string{
		{`{"pcm16":"AAABAP9/AIA="}`, ``},
		{`{"pcm16":"AAABAP9/AIA","reset":true,"sample_rate":16000}`, `{"threshold":0.5}`},
		{`{"samples":[0,0.5,-1,1e-400]}`, `{"min_speech_ms":250,"min_silence_ms":100,"pad_ms":30}`},
		{`{"samples":[0, null]}`, `null`},
		{`{"pcm16":"AAA*"}`, `{"pad_ms":1e999}`},
		{`{"pcm16":"", "samples":[]}`, `[]`},
		{`{"samples":[1.5]}`, `{"threshold":"x"}`},
		{`[]`, `{}`},
	} {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	const maxSamples = 64
	f.Fuzz(func(t *testing.T, input, params []byte) {
		in, err := decodeInput(json.RawMessage(input), maxSamples)
		if err != nil && !inference.IsInvalidInput(err) {
			t.Fatalf("input error is not InvalidInput: %v", err)
		}
		if err == nil {
			if len(in.samples) > maxSamples {
				t.Fatalf("%d samples, over the limit", len(in.samples))
			}
			for i, x := range in.samples {
				if !(x >= -1 && x <= 1) {
					t.Fatalf("sample %d = %v", i, x)
				}
			}
		}
		p, err := decodeParams(json.RawMessage(params))
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("params error is not InvalidInput: %v", err)
			}
			return
		}
		if !(p.Threshold > 0 && p.Threshold <= 1) || !(p.MinSpeechMS >= 0 && p.MinSpeechMS <= maxMS) ||
			!(p.MinSilenceMS >= 0 && p.MinSilenceMS <= maxMS) || !(p.PadMS >= 0 && p.PadMS <= (p.MinSilenceMS+FrameMS)/2) {
			t.Fatalf("params out of bounds: %+v", p)
		}
	})
}
