package llm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	"github.com/mqttinfer/mqttinfer/inference"
)

// FuzzSSEReader checks that the parser never panics and that how the
// bytes arrive never changes what it reads: whole, one byte at a time and
// in halves give the same events and the same end.
func FuzzSSEReader(f *testing.F) {
	for _, s := range []string{"data: a\n\n", "data: a\r\n\r\n", "data: a\r\r", ": c\n\nevent: e\nid: 1\ndata: x\ndata: y\n\n",
		"\xEF\xBB\xBFdata: a\n\n", "data: a\r", "error: {}\n\n", "data"} {
		f.Add([]byte(s))
	}
	if names, err := filepath.Glob(filepath.Join("testdata", "*.sse")); err == nil {
		for _, n := range names {
			if b, err := os.ReadFile(n); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		whole, werr := readAll(strings.NewReader(string(in)), 256)
		one, oerr := readAll(iotest.OneByteReader(strings.NewReader(string(in))), 256)
		half, herr := readAll(iotest.HalfReader(strings.NewReader(string(in))), 256)
		w := fmt.Sprintf("%q %v", whole, werr)
		if o := fmt.Sprintf("%q %v", one, oerr); o != w {
			t.Fatalf("whole: %s\none byte: %s", w, o)
		}
		if h := fmt.Sprintf("%q %v", half, herr); h != w {
			t.Fatalf("whole: %s\nhalves: %s", w, h)
		}
		for _, ev := range whole {
			if len(ev.Data) > 256 {
				t.Fatalf("event data of %d bytes over the limit", len(ev.Data))
			}
		}
	})
}

// FuzzDecodeInput checks that any input is either accepted whole and
// within the limits, or rejected as invalid input, never with a panic.
func FuzzDecodeInput(f *testing.F) {
	for _, s := range []string{`{"prompt":"hi"}`, `{"messages":[{"role":"user","content":"x"}],"max_tokens":5,"temperature":0.5}`,
		`{"messages":[{"role":"tool","content":"x"}]}`, `{"prompt":"hi","max_tokens":1e309}`, `[]`, `null`, `{"messages":[null]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // the transport rejects it before a model sees it
		}
		in, err := decodeInput(raw, nil, 512)
		if err != nil {
			var ie *inference.InputError
			if !errors.As(err, &ie) {
				t.Fatalf("%s: error %v is not an InputError", raw, err)
			}
			return
		}
		if len(in.messages) < 1 || len(in.messages) > MaxMessages || in.maxTokens < 0 || in.maxTokens > 512 ||
			(in.temperature != nil && (*in.temperature < 0 || *in.temperature > MaxTemperature)) {
			t.Fatalf("%s: accepted out of limits: %+v", raw, in)
		}
		for _, m := range in.messages {
			if m.Role != "system" && m.Role != "user" && m.Role != "assistant" || !utf8.ValidString(m.Content) {
				t.Fatalf("%s: accepted message %+v", raw, m)
			}
		}
	})
}
