package api

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
)

// decodeModes are the (version, content type) pairs FuzzDecode picks from
// with its mode argument: what a request topic and an MQTT 5 content type
// can combine to.
var decodeModes = [...]struct{ version, contentType string }{
	{"v1", ""},
	{"v2", ""},
	{"v2", ContentTypeCBOR},
	{"v1", ContentTypeCBOR},
}

// requestSeeds are request bodies as devices send them, and broken ones.
var requestSeeds = []string{
	`{"id":"r-42","input":{"sensor":"temp","value":21.5},"params":{},"deadline_ms":5000}`,
	`{"input":{"sensor":"temp","values":[21.5,21.7,35.2],"ts":[1732500000000,1732500001000,1732500002000]}}`,
	`{"id":"q1","stream":true,"input":{"prompt":"Why is the sky blue?"}}`,
	`{"id":"q1","cancel":true}`,
	`{"id":"b-1","inputs":[{"sensor":"t","value":1},{"sensor":"t","value":2}]}`,
	`{"inputs":[]}`, `{"inputs":[null]}`, `{"input":1,"inputs":[1]}`, `{"inputs":[1],"stream":true}`,
	`{"id":"m","input":{"pcm16":"AAABAP9/AIA="},"params":{"threshold":0.5}}`,
	`{"ID":"a","id":"b","Cancel":true,"cancel":false,"input":1}`,
	`{"id":"` + strings.Repeat("x", MaxRequestIDLen+1) + `","input":1}`,
	`{"input":1e400}`, `{"input":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
	`{"input":1,"deadline_ms":9223372036854}`, `{"input":1}x`, "{\"input\":\"\xff\"}", ``, `[]`,
}

// cborSeeds are CBOR request bodies: the shapes a v2 device sends (byte
// strings for images and audio), and the CBOR-only ways to go wrong.
func cborSeeds(tb testing.TB) [][]byte {
	var out [][]byte
	for _, v := range []any{
		map[string]any{"id": "r-1", "input": map[string]any{"sensor": "temp", "value": 21.5}},
		map[string]any{"id": "img-1", "input": map[string]any{"image": []byte{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}}},
		map[string]any{"input": map[string]any{"pcm16": []byte{0, 0, 1, 0, 0xff, 0x7f}}, "params": map[string]any{}},
		map[string]any{"inputs": []any{map[string]any{"sensor": "t", "value": 1}, map[string]any{"sensor": "t", "value": uint64(1) << 63}}},
		map[string]any{"id": "c", "cancel": true},
		map[string]any{"id": []byte("abc"), "input": 1},
		map[string]any{"ID": "a", "id": "b", "input": 1},
		map[string]any{"id": "x", "input": math.Inf(1)},
		map[string]any{"id": "x", "input": cbor.Tag{Number: 42, Content: "t"}},
		map[int]any{1: "x"},
		[]any{"id", "x"},
		"id",
	} {
		b, err := cbor.Marshal(v)
		if err != nil {
			tb.Fatalf("seed %v: %v", v, err)
		}
		out = append(out, b, b[:len(b)-1])
	}
	return append(out, []byte{0xbf, 0x62, 'i', 'd', 0x61, 'x', 0x65, 'i', 'n', 'p', 'u', 't', 0x01, 0xff}, []byte{0xa1}, nil)
}

// FuzzDecode decodes any body as a v1 or v2 request, JSON or CBOR. Decode
// must never panic; an error is invalid_request and comes with no request
// but its id; an accepted request keeps the envelope's rules (id length,
// deadline, input or inputs, batch size, no v2 fields on v1); PeekRequest
// never panics and agrees with Decode on the id and the cancel flag when
// Decode succeeds; and a request re-encoded with MarshalCBOR decodes on v2
// to the same id, flags and number of inputs.
func FuzzDecode(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add(uint8(0), []byte(s))
		f.Add(uint8(1), []byte(s))
	}
	for _, b := range cborSeeds(f) {
		f.Add(uint8(2), b)
	}
	f.Add(uint8(3), []byte{0xa1, 0x65, 'i', 'n', 'p', 'u', 't', 0x01})
	f.Fuzz(func(t *testing.T, mode uint8, body []byte) {
		m := decodeModes[int(mode)%len(decodeModes)]
		orig := bytes.Clone(body)
		r, e := Decode(m.version, body, m.contentType)
		if !bytes.Equal(body, orig) {
			t.Fatalf("Decode changed its input %q to %q", orig, body)
		}
		head, ok := PeekRequest(body, m.contentType)
		if len(head.ID) > MaxRequestIDLen {
			t.Fatalf("PeekRequest(%q, %q) id of %d bytes", body, m.contentType, len(head.ID))
		}
		if e != nil {
			if e.Type != InvalidRequest || e.Message == "" {
				t.Fatalf("Decode(%s, %q, %q): error %#v, want invalid_request with a message", m.version, body, m.contentType, e)
			}
			if !reflect.DeepEqual(r, Request{ID: r.ID}) {
				t.Fatalf("Decode(%s, %q, %q) returned both a request %+v and an error %v", m.version, body, m.contentType, r, e)
			}
			if len(r.ID) > MaxRequestIDLen {
				t.Fatalf("Decode(%s, %q, %q) failed with an id of %d bytes", m.version, body, m.contentType, len(r.ID))
			}
			return
		}
		if m.version == "v1" && m.contentType == ContentTypeCBOR {
			t.Fatalf("Decode accepted a CBOR body on v1: %q", body)
		}
		checkEnvelope(t, m.version, body, r)
		if !ok || head.ID != r.ID || head.Cancel != r.Cancel {
			t.Fatalf("Decode(%s, %q, %q) = id %q cancel %v, but PeekRequest = %+v, %v", m.version, body, m.contentType, r.ID, r.Cancel, head, ok)
		}

		js, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("accepted request %+v does not encode: %v", r, err)
		}
		enc, err := MarshalCBOR(r)
		if err != nil {
			t.Fatalf("MarshalCBOR of accepted request %s: %v", js, err)
		}
		if !cborSafe(js) {
			return // past what CBOR can carry back: deep nesting, numbers beyond float64
		}
		r2, e := Decode("v2", enc, ContentTypeCBOR)
		if e != nil {
			t.Fatalf("request %s of %q does not decode from its CBOR %x: %v", js, body, enc, e)
		}
		if r2.ID != r.ID || r2.Cancel != r.Cancel || r2.Stream != r.Stream || r2.DeadlineMS != r.DeadlineMS ||
			(r2.Input == nil) != (r.Input == nil) || len(r2.Inputs) != len(r.Inputs) || (r2.Params == nil) != (r.Params == nil) {
			t.Fatalf("CBOR round trip of %q changed the request:\n%+v\n%+v", body, r, r2)
		}
	})
}

// checkEnvelope checks an accepted request against the envelope's rules.
func checkEnvelope(t *testing.T, version string, body []byte, r Request) {
	t.Helper()
	switch {
	case len(r.ID) > MaxRequestIDLen:
		t.Fatalf("%s %q: accepted an id of %d bytes", version, body, len(r.ID))
	case r.DeadlineMS < 0 || r.DeadlineMS > maxDeadlineMS:
		t.Fatalf("%s %q: accepted deadline_ms %d", version, body, r.DeadlineMS)
	case r.Input == nil && r.Inputs == nil && !r.Cancel:
		t.Fatalf("%s %q: accepted without input, inputs or cancel", version, body)
	case version == "v1" && r.Inputs != nil:
		t.Fatalf("v1 %q: accepted inputs", body)
	case r.Input != nil && r.Inputs != nil:
		t.Fatalf("%s %q: accepted both input and inputs", version, body)
	case r.Inputs != nil && (len(r.Inputs) == 0 || len(r.Inputs) > MaxBatchInputs):
		t.Fatalf("%s %q: accepted a batch of %d inputs", version, body, len(r.Inputs))
	case r.Inputs != nil && r.Stream:
		t.Fatalf("%s %q: accepted a streamed batch", version, body)
	case r.Params != nil && r.Params[0] != '{':
		t.Fatalf("%s %q: accepted params %s", version, body, r.Params)
	}
	for i, in := range append([]json.RawMessage{r.Input, r.Params}, r.Inputs...) {
		if in != nil && !json.Valid(in) {
			t.Fatalf("%s %q: raw value %d is not JSON: %q", version, body, i, in)
		}
	}
}

// cborSafe reports whether the JSON js survives CBOR and back: nested
// within the CBOR decoder's limit, with numbers that are finite float64s.
func cborSafe(js []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	depth := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
		switch v := tok.(type) {
		case json.Delim:
			if v == '{' || v == '[' {
				if depth++; depth > 30 {
					return false
				}
			} else {
				depth--
			}
		case json.Number:
			if x, err := strconv.ParseFloat(string(v), 64); err != nil && math.IsInf(x, 0) {
				return false
			}
		}
	}
}

// FuzzPeekReply reads any body as a reply head, JSON or CBOR, and checks
// that the heads of replies built by this package read back: a result's
// id and status, a stream event's id, status and seq, in both encodings.
func FuzzPeekReply(f *testing.F) {
	for _, s := range []string{
		`{"id":"r-42","model":"anomaly","model_version":"1","status":200,"output":{"score":0},"latency_ms":0.8}`,
		`{"id":"q1","model":"chat","seq":3,"event":"delta","delta":{"text":"Hi"}}`,
		`{"id":"q1","model":"chat","seq":9,"event":"done","status":200,"output":{}}`,
		`{"id":"r","status":"200"}`, `{"id":5}`, `[]`, `null`, ``, `{"id":"a"}{`,
	} {
		f.Add([]byte(s), false, "r-42", 200, 0)
	}
	f.Add([]byte{0xa2, 0x62, 'i', 'd', 0x61, 'x', 0x66, 's', 't', 'a', 't', 'u', 's', 0x18, 0xc8}, true, "q1", 0, 7)
	f.Add([]byte{0xa1, 0x62, 'i', 'd', 0x43, 'a', 'b', 'c'}, true, "", 499, 12)
	f.Add([]byte{0xff}, true, "\u2028<&>", -1, -1)
	f.Fuzz(func(t *testing.T, body []byte, isCBOR bool, id string, status, seq int) {
		ct := ""
		if isCBOR {
			ct = ContentTypeCBOR
		}
		PeekReply(body, ct) // must not panic, whatever the body
		if !utf8.ValidString(id) {
			return // JSON would replace the bad bytes
		}
		for _, v := range []struct {
			reply any
			want  ReplyHead
		}{
			{Result{ID: id, Model: "m", Status: status}, ReplyHead{ID: id, Status: status}},
			{StreamEvent{ID: id, Model: "m", Seq: seq, Event: EventDelta, Status: status}, ReplyHead{ID: id, Status: status, Seq: seq}},
		} {
			for _, enc := range []struct {
				ct      string
				marshal func(any) ([]byte, error)
			}{
				{"", func(v any) ([]byte, error) { return Marshal("v1", v) }},
				{ContentTypeCBOR, MarshalCBOR},
			} {
				b, err := enc.marshal(v.reply)
				if err != nil {
					t.Fatalf("encoding %+v as %q: %v", v.reply, enc.ct, err)
				}
				h, ok := PeekReply(b, enc.ct)
				if !ok || h != v.want || h.Final() != (status != 0) {
					t.Fatalf("PeekReply(%q, %q) = %+v, %v; want %+v", b, enc.ct, h, ok, v.want)
				}
			}
		}
	})
}

// FuzzContentID checks that the id given to a request without one is
// deterministic, leaves the body alone, and is a short "c-<hex>" that fits
// the id limit, so it can be echoed like a device's own id.
func FuzzContentID(f *testing.F) {
	f.Add("mqttinfer/v1/req/thermo-1/anomaly", []byte(`{"input":{"sensor":"temp","value":21.5}}`))
	f.Add("mqttinfer/v2/req/cam-7/detect", []byte{0xa1, 0x65, 'i', 'n', 'p', 'u', 't', 0x01})
	f.Add("", []byte(nil))
	f.Add("a\x00b", []byte("\x00"))
	f.Fuzz(func(t *testing.T, topic string, body []byte) {
		orig := bytes.Clone(body)
		id := ContentID(topic, body)
		if !bytes.Equal(body, orig) {
			t.Fatalf("ContentID changed the body")
		}
		if again := ContentID(topic, bytes.Clone(body)); again != id {
			t.Fatalf("ContentID(%q, %q) = %q, then %q", topic, body, id, again)
		}
		hex, ok := strings.CutPrefix(id, "c-")
		if !ok || len(id) > MaxRequestIDLen || hex == "" || len(hex) > 16 || strings.Trim(hex, "0123456789abcdef") != "" {
			t.Fatalf("ContentID(%q, %q) = %q, want c-<hex of a 64-bit hash>", topic, body, id)
		}
		if PeekID([]byte(`{"id":"`+id+`"}`)) != id {
			t.Fatalf("ContentID %q does not read back as a request id", id)
		}
	})
}
