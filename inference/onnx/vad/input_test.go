package vad

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

func TestDecodeInput(t *testing.T) {
	le := func(s ...int16) string {
		b := make([]byte, 0, 2*len(s))
		for _, x := range s {
			b = append(b, byte(x), byte(uint16(x)>>8))
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	good := []struct {
		in    string
		want  []float32
		reset bool
	}{
		{`{"pcm16": "` + le(0, 16384, -32768, 32767) + `"}`, []float32{0, 0.5, -1, 32767.0 / 32768}, false},
		{`{"pcm16": "` + strings.TrimRight(le(1, 2, 3), "=") + `"}`, []float32{1.0 / 32768, 2.0 / 32768, 3.0 / 32768}, false},
		{`{"pcm16": "", "reset": true}`, []float32{}, true},
		{`{"samples": [0, 0.5, -1, 1, 1e-400, -0.25], "sample_rate": 16000, "reset": false}`, []float32{0, 0.5, -1, 1, 0, -0.25}, false},
		{`{"samples": [ ], "sample_rate": 16000.0}`, []float32{}, false},
		{` { "samples" : [ 0.1 ,0.2 ] } `, []float32{0.1, 0.2}, false},
	}
	for _, c := range good {
		in, err := decodeInput(json.RawMessage(c.in), 10)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if len(in.samples) != len(c.want) || in.reset != c.reset {
			t.Errorf("%s: %v reset %v, want %v reset %v", c.in, in.samples, in.reset, c.want, c.reset)
			continue
		}
		for i := range c.want {
			if in.samples[i] != c.want[i] {
				t.Errorf("%s: sample %d = %v, want %v", c.in, i, in.samples[i], c.want[i])
			}
		}
	}

	bad := []struct{ in, msg string }{
		{``, "input is required"},
		{`null`, "input is required"},
		{`[1]`, "input must be a JSON object"},
		{`{}`, "input.pcm16 (base64"},
		{`{"reset": true}`, "input.pcm16 (base64"},
		{`{"pcm16": "", "samples": []}`, "either pcm16 or samples"},
		{`{"pcm16": "AAA*"}`, "not valid base64"},
		{`{"pcm16": "AAAAA==="}`, "not valid base64"},
		{`{"pcm16": "AA==AA=="}`, "not valid base64"},
		{`{"pcm16": "A"}`, "not valid base64"},
		{`{"pcm16": "AAAA"}`, "odd number"},
		{`{"pcm16": 12}`, "input.pcm16 must be a base64 string, got a number"},
		{`{"pcm16": "` + le(make([]int16, 11)...) + `"}`, "more than 10 samples"},
		{`{"pcm16": "` + le(make([]int16, 30)...) + `"}`, "more than 10 samples"},
		{`{"samples": [0.5, 1.5]}`, "input.samples[1] is 1.5, outside [-1, 1]"},
		{`{"samples": [-1.0000001]}`, "outside [-1, 1]"},
		{`{"samples": [1e400]}`, "input.samples[0] must be a number"},
		{`{"samples": [0, null]}`, "input.samples[1] must be a number in [-1, 1], got null"},
		{`{"samples": ["NaN"]}`, "got a string"},
		{`{"samples": [[0]]}`, "got an array"},
		{`{"samples": "0,1"}`, "input.samples must be an array"},
		{`{"samples": [0,0,0,0,0,0,0,0,0,0,0]}`, "more than 10 samples"},
		{`{"samples": [0], "sample_rate": 8000}`, "input.sample_rate must be 16000"},
		{`{"samples": [0], "sample_rate": 16000.5}`, "input.sample_rate must be 16000"},
		{`{"samples": [0], "sample_rate": "16000"}`, "input.sample_rate must be the number 16000, got a string"},
		{`{"samples": [0], "reset": 1}`, "input.reset must be true or false, got a number"},
		{`{"samples": [0], "rate": 16000}`, `unknown field "rate"`},
		{`{"samples": [0],}`, "not valid JSON"},
	}
	for _, c := range bad {
		_, err := decodeInput(json.RawMessage(c.in), 10)
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want InvalidInput with %q", c.in, err, c.msg)
		}
	}
}

func TestDecodeParams(t *testing.T) {
	for _, raw := range []string{``, `null`, ` {} `} {
		p, err := decodeParams(json.RawMessage(raw))
		if err != nil || p != DefaultParams {
			t.Errorf("%q: %+v, %v", raw, p, err)
		}
	}
	p, err := decodeParams(json.RawMessage(`{"threshold": 0.7, "min_speech_ms": 0, "min_silence_ms": 300, "pad_ms": 166}`))
	if err != nil || p != (Params{Threshold: 0.7, MinSpeechMS: 0, MinSilenceMS: 300, PadMS: 166}) {
		t.Errorf("%+v, %v", p, err)
	}
	bad := []struct{ in, msg string }{
		{`[]`, "params must be a JSON object"},
		{`{"threshold": 0}`, "params.threshold must be in (0, 1]"},
		{`{"threshold": 1.01}`, "params.threshold must be in (0, 1]"},
		{`{"threshold": "0.5"}`, "params.threshold must be a number, got a string"},
		{`{"threshold": 1e999}`, "params.threshold must be a finite number"},
		{`{"min_speech_ms": -1}`, "params.min_speech_ms must be in [0, 60000]"},
		{`{"min_silence_ms": 60001}`, "params.min_silence_ms must be in [0, 60000]"},
		{`{"pad_ms": null}`, "params.pad_ms must be a number, got null"},
		{`{"pad_ms": 67}`, "params.pad_ms (67) must be at most (min_silence_ms + 32) / 2 = 66"},
		{`{"min_silence_ms": 0}`, "params.pad_ms (30) must be at most"},
		{`{"max_speech_s": 5}`, `unknown field "max_speech_s"`},
	}
	for _, c := range bad {
		_, err := decodeParams(json.RawMessage(c.in))
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want InvalidInput with %q", c.in, err, c.msg)
		}
	}
}
