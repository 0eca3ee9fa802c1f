package api

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

func TestDecodeRequestValid(t *testing.T) {
	id64 := strings.Repeat("i", MaxRequestIDLen)
	tests := []struct {
		name, body string
		want       Request
	}{
		{"input only", `{"input":{"value":1.5}}`,
			Request{Input: json.RawMessage(`{"value":1.5}`)}},
		{"design example", `{"id": "r-42", "input": {"sensor": "t1", "value": 21.5}, "params": {}, "stream": false, "deadline_ms": 5000}`,
			Request{ID: "r-42", Input: json.RawMessage(`{"sensor": "t1", "value": 21.5}`), Params: json.RawMessage(`{}`), DeadlineMS: 5000}},
		{"id of 64 bytes", `{"id":"` + id64 + `","input":1}`,
			Request{ID: id64, Input: json.RawMessage(`1`)}},
		{"empty id means absent", `{"id":"","input":[1,2]}`,
			Request{Input: json.RawMessage(`[1,2]`)}},
		{"null id means absent", `{"id":null,"input":"x"}`,
			Request{Input: json.RawMessage(`"x"`)}},
		{"input of any JSON type", `{"input":"base64=="}`,
			Request{Input: json.RawMessage(`"base64=="`)}},
		{"input false", `{"input":false}`,
			Request{Input: json.RawMessage(`false`)}},
		{"params object", `{"input":1,"params":{"threshold":3,"nested":{"a":[1]}}}`,
			Request{Input: json.RawMessage(`1`), Params: json.RawMessage(`{"threshold":3,"nested":{"a":[1]}}`)}},
		{"null params", `{"input":1,"params":null}`,
			Request{Input: json.RawMessage(`1`)}},
		{"stream", `{"id":"s1","input":{"prompt":"hi"},"stream":true}`,
			Request{ID: "s1", Input: json.RawMessage(`{"prompt":"hi"}`), Stream: true}},
		{"deadline zero means default", `{"input":1,"deadline_ms":0}`,
			Request{Input: json.RawMessage(`1`)}},
		{"largest deadline", `{"input":1,"deadline_ms":` + strconv.FormatInt(maxDeadlineMS, 10) + `}`,
			Request{Input: json.RawMessage(`1`), DeadlineMS: maxDeadlineMS}},
		{"cancel without input", `{"id":"s1","cancel":true}`,
			Request{ID: "s1", Cancel: true}},
		{"cancel with null input", `{"id":"s1","cancel":true,"input":null}`,
			Request{ID: "s1", Cancel: true}},
		{"unknown fields ignored", `{"input":1,"inputs":[1],"future":{"x":1}}`,
			Request{Input: json.RawMessage(`1`)}},
		{"field names fold case", `{"ID":"r1","Input":1,"Stream":true}`,
			Request{ID: "r1", Input: json.RawMessage(`1`), Stream: true}},
		{"JSON whitespace around", " \t\r\n{\"input\":1}\n\r\t ",
			Request{Input: json.RawMessage(`1`)}},
		{"escaped id", `{"id":"r\u002d1 \u00e9","input":1}`,
			Request{ID: "r-1 é", Input: json.RawMessage(`1`)}},
		{"last duplicate wins", `{"id":"a","id":"b","input":1}`,
			Request{ID: "b", Input: json.RawMessage(`1`)}},
	}
	for _, tc := range tests {
		got, e := DecodeRequest([]byte(tc.body))
		if e != nil {
			t.Errorf("%s: DecodeRequest(%s): %v", tc.name, tc.body, e)
			continue
		}
		if !equalRequest(got, tc.want) {
			t.Errorf("%s: DecodeRequest(%s) = %+v, want %+v", tc.name, tc.body, got, tc.want)
		}
	}
}

func equalRequest(a, b Request) bool {
	return a.ID == b.ID && bytes.Equal(a.Input, b.Input) && bytes.Equal(a.Params, b.Params) &&
		a.Stream == b.Stream && a.DeadlineMS == b.DeadlineMS && a.Cancel == b.Cancel
}

func TestDecodeRequestInvalid(t *testing.T) {
	long := strings.Repeat("L", MaxRequestIDLen+1)
	tests := []struct {
		name, body string
		wantMsg    string // a part of the message, usually the field's name
		wantID     string // the id the failed Request still carries
	}{
		{"empty body", ``, "empty body", ""},
		{"whitespace body", " \n\t", "empty body", ""},
		{"array", `[{"input":1}]`, "not a JSON object", ""},
		{"null body", `null`, "not a JSON object", ""},
		{"string body", `"input"`, "not a JSON object", ""},
		{"number body", `42`, "not a JSON object", ""},
		{"not JSON", `hello`, "not a JSON object", ""},
		{"non-JSON whitespace before", "\u00a0{\"input\":1}", "not a JSON object", ""},
		{"byte order mark", "\ufeff{\"input\":1}", "not a JSON object", ""},

		{"id a number", `{"id":42,"input":1}`, `"id"`, ""},
		{"id an object", `{"id":{"id":"x"},"input":1}`, `"id"`, ""},
		{"id over 64 bytes", `{"id":"` + long + `","input":1}`, `"id"`, ""},
		{"input missing", `{"id":"r1"}`, `"input"`, "r1"},
		{"input null", `{"id":"r1","input":null}`, `"input"`, "r1"},
		{"stream a string", `{"id":"r1","input":1,"stream":"yes"}`, `"stream"`, "r1"},
		{"stream a number", `{"id":"r1","input":1,"stream":1}`, `"stream"`, "r1"},
		{"cancel a string", `{"id":"r1","cancel":"true"}`, `"cancel"`, "r1"},
		{"deadline negative", `{"id":"r1","input":1,"deadline_ms":-1}`, `"deadline_ms"`, "r1"},
		{"deadline a string", `{"id":"r1","input":1,"deadline_ms":"5000"}`, `"deadline_ms"`, "r1"},
		{"deadline a fraction", `{"id":"r1","input":1,"deadline_ms":1.5}`, `"deadline_ms"`, "r1"},
		{"deadline overflows int64", `{"id":"r1","input":1,"deadline_ms":1e30}`, `"deadline_ms"`, "r1"},
		{"deadline overflows a duration", `{"id":"r1","input":1,"deadline_ms":` + strconv.FormatInt(maxDeadlineMS+1, 10) + `}`, `"deadline_ms"`, "r1"},
		{"params an array", `{"id":"r1","input":1,"params":[1]}`, `"params"`, "r1"},
		{"params a string", `{"id":"r1","input":1,"params":"x"}`, `"params"`, "r1"},
		{"params a number", `{"id":"r1","input":1,"params":3}`, `"params"`, "r1"},

		{"trailing object", `{"id":"r1","input":1}{"input":2}`, "trailing data", "r1"},
		{"trailing word", `{"id":"r1","input":1} x`, "trailing data", "r1"},
		{"trailing brace", `{"id":"r1","input":1}}`, "trailing data", "r1"},
		{"trailing bracket", `{"id":"r1","input":1}]`, "trailing data", "r1"},
		{"trailing non-JSON space", "{\"id\":\"r1\",\"input\":1}\u00a0", "trailing data", "r1"},

		{"unterminated", `{"id":"r1","input":{`, "malformed JSON", "r1"},
		{"syntax error after id", `{"id":"r1","input":[1,,2]}`, "malformed JSON", "r1"},
		{"syntax error before id", `{"input":[1,,2],"id":"r1"}`, "malformed JSON", ""},
		{"unquoted key", `{id:"r1"}`, "malformed JSON", ""},

		{"invalid UTF-8 in input", "{\"id\":\"r1\",\"input\":\"\xff\"}", "UTF-8", "r1"},
		{"invalid UTF-8 in id", "{\"id\":\"r\xc3\",\"input\":1}", "UTF-8", "r\ufffd"},
	}
	for _, tc := range tests {
		got, e := DecodeRequest([]byte(tc.body))
		if e == nil {
			t.Errorf("%s: DecodeRequest(%q) = %+v, want an error", tc.name, tc.body, got)
			continue
		}
		if e.Type != InvalidRequest || e.Status() != 400 {
			t.Errorf("%s: error type %q (status %d), want invalid_request (400)", tc.name, e.Type, e.Status())
		}
		if !strings.Contains(e.Message, tc.wantMsg) {
			t.Errorf("%s: message %q does not contain %q", tc.name, e.Message, tc.wantMsg)
		}
		if want := (Request{ID: tc.wantID}); !equalRequest(got, want) {
			t.Errorf("%s: failed request = %+v, want only the id %q", tc.name, got, tc.wantID)
		}
	}
}

func TestPeekID(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"id first", `{"id":"r-42","input":{}}`, "r-42"},
		{"id after nested objects", `{"input":{"id":"inner","a":{"id":"deeper"}},"params":[{"id":1}],"id":"outer"}`, "outer"},
		{"nested id only", `{"input":{"id":"inner"}}`, ""},
		{"id a number", `{"id":42}`, ""},
		{"id an object", `{"id":{"x":"y"},"input":1}`, ""},
		{"id null", `{"id":null}`, ""},
		{"id of 64 bytes", `{"id":"` + strings.Repeat("a", 64) + `"}`, strings.Repeat("a", 64)},
		{"id over 64 bytes", `{"id":"` + strings.Repeat("a", 65) + `"}`, ""},
		{"id with escapes", `{"id":"a\"b\\c\u0041"}`, `a"b\cA`},
		{"broken JSON after the id", `{"id":"r1","input":[1,,}`, "r1"},
		{"truncated after the id", `{"id":"r1",`, "r1"},
		{"id after broken JSON", `{"input":[1,,],"id":"r1"}`, ""},
		{"truncated id", `{"id":"r1`, ""},
		{"wrong type elsewhere", `{"id":"r1","stream":"yes"}`, "r1"},
		{"key case folds", `{"Id":"r1"}`, "r1"},
		{"last id wins", `{"id":"a","input":1,"ID":"b"}`, "b"},
		{"a later non-string id keeps the string", `{"id":"a","id":5}`, "a"},
		{"a later long id hides the string", `{"id":"a","id":"` + strings.Repeat("a", 65) + `"}`, ""},
		{"not an object", `["id","r1"]`, ""},
		{"string", `"id"`, ""},
		{"empty", ``, ""},
		{"empty object", `{}`, ""},
		{"no id", `{"input":1}`, ""},
	}
	for _, tc := range tests {
		if got := PeekID([]byte(tc.body)); got != tc.want {
			t.Errorf("%s: PeekID(%s) = %q, want %q", tc.name, tc.body, got, tc.want)
		}
	}
}

// DecodeRequest and PeekID agree on the id of every body that decodes.
func TestPeekIDAgreesWithDecode(t *testing.T) {
	for _, body := range []string{
		`{"id":"a","input":1}`, `{"input":1,"id":"a"}`, `{"ID":"a","input":1}`,
		`{"id":"a","Id":"b","input":1}`, `{"id":"a","id":null,"input":1}`,
		`{"input":{"id":"x"},"id":"a"}`, `{"input":1}`,
	} {
		r, e := DecodeRequest([]byte(body))
		if e != nil {
			t.Fatalf("DecodeRequest(%s): %v", body, e)
		}
		if p := PeekID([]byte(body)); p != r.ID {
			t.Errorf("%s: PeekID = %q, DecodeRequest id = %q", body, p, r.ID)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"r-42","input":{"sensor":"t1","value":21.5},"params":{},"stream":false,"deadline_ms":5000}`,
		`{"input":1}`, `{"id":"s1","cancel":true}`, `{"input":"<&>"}`, `{"input":{ "a" : [ 1 , 2 ] }}`,
		`{"id":"\ud800","input":"\u2028"}`, `{"input":1}}`, `{"ID":"x","Input":null,"cancel":true}`,
		`{"input":1,"deadline_ms":-1}`, `{"input":1,"params":[]}`, `[]`, ``, "{\"input\":\"\xff\"}",
		`{"id":"a","id":5,"input":1}`, `{"input":1e999}`, "{\"input\":1}\u00a0", `{"input":1}]`,
		`{"input":1,"deadline_ms":9223372036855}`, `{"Id":"a","input":1,"stream":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := DecodeRequest(body)
		if e != nil {
			if e.Type != InvalidRequest || e.Message == "" {
				t.Fatalf("DecodeRequest(%q): error %#v, want invalid_request with a message", body, e)
			}
			if len(r.ID) > MaxRequestIDLen || r.Input != nil || r.Params != nil || r.Stream || r.Cancel || r.DeadlineMS != 0 {
				t.Fatalf("DecodeRequest(%q) failed with more than an id: %+v", body, r)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("DecodeRequest accepted %q, which is not JSON", body)
		}
		if len(r.ID) > MaxRequestIDLen || r.DeadlineMS < 0 || r.DeadlineMS > maxDeadlineMS || (r.Input == nil && !r.Cancel) {
			t.Fatalf("DecodeRequest(%q) accepted %+v", body, r)
		}
		if p := PeekID(body); p != r.ID {
			t.Fatalf("DecodeRequest(%q) id %q, PeekID %q", body, r.ID, p)
		}
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", r, err)
		}
		r2, e := DecodeRequest(enc)
		if e != nil {
			t.Fatalf("re-encoded request %s of %q does not decode: %v", enc, body, e)
		}
		// Raw input and params come back compacted and HTML-escaped, so they
		// are compared in that canonical form, through a second encoding.
		enc2, err := json.Marshal(r2)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", r2, err)
		}
		if r2.ID != r.ID || r2.Stream != r.Stream || r2.DeadlineMS != r.DeadlineMS || r2.Cancel != r.Cancel ||
			(r2.Input == nil) != (r.Input == nil) || (r2.Params == nil) != (r.Params == nil) || !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip of %q changed the request:\n%+v (%s)\n%+v (%s)", body, r, enc, r2, enc2)
		}
	})
}
