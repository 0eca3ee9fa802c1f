package api

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// statusTable is the status/type table of DESIGN.md, row by row.
var statusTable = []struct {
	status int
	types  []ErrorType
}{
	{400, []ErrorType{"invalid_request"}},
	{403, []ErrorType{"forbidden"}},
	{404, []ErrorType{"model_not_found", "model_version_not_found", "unsupported_version"}},
	{408, []ErrorType{"deadline_exceeded"}},
	{413, []ErrorType{"payload_too_large"}},
	{422, []ErrorType{"invalid_input"}},
	{429, []ErrorType{"rate_limited"}},
	{499, []ErrorType{"canceled"}},
	{500, []ErrorType{"inference_failed"}},
	{503, []ErrorType{"overloaded", "model_unavailable"}},
}

func TestErrorTypeStatus(t *testing.T) {
	var want []ErrorType
	for _, row := range statusTable {
		for _, typ := range row.types {
			want = append(want, typ)
			if got := typ.Status(); got != row.status {
				t.Errorf("%s.Status() = %d, want %d", typ, got, row.status)
			}
			if got := Errorf(typ, "x").Status(); got != row.status {
				t.Errorf("Errorf(%s).Status() = %d, want %d", typ, got, row.status)
			}
		}
	}
	// ErrorTypes lists exactly the table, sorted by status then name.
	slices.SortFunc(want, func(a, b ErrorType) int {
		return cmp.Or(cmp.Compare(a.Status(), b.Status()), cmp.Compare(a, b))
	})
	if got := ErrorTypes(); !slices.Equal(got, want) {
		t.Errorf("ErrorTypes() = %q,\nwant %q", got, want)
	}
	// The constants spell the wire names.
	consts := []ErrorType{InvalidRequest, Forbidden, ModelNotFound, VersionNotFound, UnsupportedVersion, DeadlineExceeded,
		PayloadTooLarge, InvalidInput, RateLimited, Canceled, InferenceFailed, Overloaded, ModelUnavailable}
	slices.Sort(consts)
	sorted := slices.Sorted(slices.Values(want))
	if !slices.Equal(consts, sorted) {
		t.Errorf("constants %q differ from the table %q", consts, sorted)
	}
	for _, typ := range []ErrorType{"", "unknown", "Invalid_Request"} {
		if got := typ.Status(); got != 500 {
			t.Errorf("ErrorType(%q).Status() = %d, want 500", typ, got)
		}
	}
}

func TestError(t *testing.T) {
	e := Errorf(RateLimited, "device %s is over %d req/s", "d1", 5)
	if e.Type != RateLimited || e.Message != "device d1 is over 5 req/s" {
		t.Fatalf("Errorf = %+v", e)
	}
	if got, want := e.Error(), "rate_limited: device d1 is over 5 req/s"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	var err error = e
	var target *Error
	if !errors.As(err, &target) || target != e {
		t.Error("errors.As does not find the *Error")
	}
	res := ErrorResult("r1", "vad", e)
	if res.ID != "r1" || res.Model != "vad" || res.Status != 429 || res.Error != e || res.Output != nil {
		t.Errorf("ErrorResult = %+v", res)
	}
}

func TestNewIDUnique(t *testing.T) {
	const goroutines, perG = 8, 2000
	ids := make([][]string, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for range perG {
				ids[g] = append(ids[g], NewID())
			}
		})
	}
	wg.Wait()
	// Ids are fit for topics and replies: [A-Za-z0-9._-], within the id limit.
	shape := regexp.MustCompile(`^g[0-9A-V]{8}-[0-9a-z]+$`)
	seen := make(map[string]bool, goroutines*perG)
	for _, list := range ids {
		for _, id := range list {
			if seen[id] {
				t.Fatalf("NewID returned %q twice", id)
			}
			seen[id] = true
			if !shape.MatchString(id) || len(id) > MaxRequestIDLen {
				t.Fatalf("NewID() = %q: not of the form %s within %d bytes", id, shape, MaxRequestIDLen)
			}
		}
	}
	if len(seen) != goroutines*perG {
		t.Fatalf("%d ids, want %d", len(seen), goroutines*perG)
	}
}

// The wire shapes of DESIGN.md, as written there. Marshal must produce them
// byte for byte once compacted; the golden files hold that compact form so a
// change to the encoding shows up as a diff.
const (
	designResult = `{"id": "r-42", "model": "anomaly", "model_version": "1", "status": 200,
 "output": {"...": "model specific"}, "latency_ms": 0.8,
 "ratelimit": {"limit": 10, "remaining": 7, "reset_ms": 600}}`
	designError = `{"id": "r-42", "model": "anomaly", "status": 429,
 "error": {"type": "rate_limited", "message": "device d1 is over 5 req/s (burst 10)", "retry_after_ms": 180}}`
)

func TestMarshalGolden(t *testing.T) {
	rl := &RateLimit{Limit: 10, Remaining: 7, ResetMS: 600}
	e := Errorf(RateLimited, "device %s is over %d req/s (burst %d)", "d1", 5, 10)
	e.RetryAfterMS = 180
	notFound := Errorf(ModelNotFound, "model %q does not exist; models: anomaly, vad", "ocr")
	notFound.Models = []string{"anomaly", "vad"}
	badVersion := Errorf(UnsupportedVersion, "API version %q is not supported", "v9")
	badVersion.Versions = []string{"v1", "v2"}
	tests := []struct {
		golden  string
		version string
		design  string // the DESIGN.md example this must equal, if any
		v       any
	}{
		{"result_v1.json", "v1", designResult, Result{
			ID: "r-42", Model: "anomaly", ModelVersion: "1", Status: StatusOK,
			Output: json.RawMessage(`{"...": "model specific"}`), LatencyMS: 0.8, RateLimit: rl,
		}},
		{"error_v1.json", "v1", designError, ErrorResult("r-42", "anomaly", e)},
		{"error_model_not_found_v1.json", "v1", "", ErrorResult("r-43", "ocr", notFound)},
		{"error_unsupported_version_v9.json", "v9", "", ErrorResult("r-44", "anomaly", badVersion)},
		{"result_deprecated_v1.json", "v1", "", Result{
			ID: "r-45", Model: "anomaly", ModelVersion: "1", Status: StatusOK,
			Output: json.RawMessage(`{"anomaly":false,"score":0.4}`), LatencyMS: 1.25,
			RateLimit:   &RateLimit{Limit: 10, Remaining: 0, ResetMS: 0},
			Deprecation: "v1 is deprecated; move to v2",
		}},
		{"stream_delta_v1.json", "v1", "", StreamEvent{
			ID: "c1", Model: "chat", Seq: 0, Event: EventDelta, Delta: json.RawMessage(`{"text":"Hel"}`),
		}},
		{"stream_done_v1.json", "v1", "", StreamEvent{
			ID: "c1", Model: "chat", Seq: 3, Event: EventDone, Status: StatusOK,
			Output: json.RawMessage(`{"text":"Hello"}`), Usage: json.RawMessage(`{"tokens":3}`), RateLimit: rl,
		}},
		{"stream_error_v1.json", "v1", "", StreamEvent{
			ID: "c1", Model: "chat", Seq: 2, Event: EventError, Status: 499,
			Error: Errorf(Canceled, "canceled by the device"),
		}},
	}
	for _, tc := range tests {
		got, err := Marshal(tc.version, tc.v)
		if err != nil {
			t.Errorf("%s: Marshal: %v", tc.golden, err)
			continue
		}
		want, err := os.ReadFile(filepath.Join("testdata", tc.golden))
		if err != nil {
			t.Fatal(err)
		}
		want = bytes.TrimSuffix(want, []byte("\n"))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: Marshal =\n%s\nwant\n%s", tc.golden, got, want)
		}
		if tc.design != "" {
			var design bytes.Buffer
			if err := json.Compact(&design, []byte(tc.design)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, design.Bytes()) {
				t.Errorf("%s: Marshal =\n%s\nDESIGN.md says\n%s", tc.golden, got, design.Bytes())
			}
		}
	}
}

// A result marshalled with every version decodes back to itself.
func TestMarshalRoundTrip(t *testing.T) {
	in := Result{
		ID: "r1", Model: "vad", ModelVersion: "5", Status: StatusOK,
		Output: json.RawMessage(`{"speech":true,"p":0.97}`), LatencyMS: 3.5,
		RateLimit: &RateLimit{Limit: 5, Remaining: 4, ResetMS: 200},
	}
	for _, v := range []string{"v1", "v2"} {
		b, err := Marshal(v, in)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		var out Result
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if out.ID != in.ID || out.Model != in.Model || out.Status != in.Status || out.LatencyMS != in.LatencyMS ||
			*out.RateLimit != *in.RateLimit || !bytes.Equal(out.Output, in.Output) || out.Error != nil {
			t.Errorf("%s: round trip = %+v, want %+v", v, out, in)
		}
	}
	// Output that is not JSON is an error, not a broken payload.
	if b, err := Marshal("v1", Result{ID: "r1", Output: json.RawMessage(`{`)}); err == nil {
		t.Errorf("Marshal accepted an invalid output: %s", b)
	}
}

func TestPeekReply(t *testing.T) {
	res := Result{ID: "r-1", Model: "m", Status: 429, Error: Errorf(RateLimited, "slow down")}
	delta := StreamEvent{ID: "s-1", Model: "chat", Seq: 3, Event: EventDelta, Delta: []byte(`{"text":"hi"}`)}
	done := StreamEvent{ID: "s-1", Model: "chat", Seq: 4, Event: EventDone, Status: 200, Output: []byte(`{}`)}
	for _, tc := range []struct {
		v      any
		id     string
		status int
	}{{res, "r-1", 429}, {delta, "s-1", 0}, {done, "s-1", 200}} {
		js, _ := Marshal("v1", tc.v)
		cb, err := MarshalCBOR(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		for _, body := range []struct {
			b  []byte
			ct string
		}{{js, ""}, {cb, ContentTypeCBOR}} {
			h, ok := PeekReply(body.b, body.ct)
			if !ok || h.ID != tc.id || h.Status != tc.status || h.Final() != (tc.status != 0) {
				t.Errorf("PeekReply(%T, %q) = %+v %v", tc.v, body.ct, h, ok)
			}
		}
	}
	if _, ok := PeekReply([]byte("not json"), ""); ok {
		t.Error("garbage read as a reply")
	}
	if h, ok := PeekRequest([]byte(`{"id":"x","cancel":true}`), ""); !ok || h.ID != "x" || !h.Cancel {
		t.Errorf("PeekRequest: %+v %v", h, ok)
	}
	cb, _ := MarshalCBOR(map[string]any{"id": "y", "input": map[string]any{"pcm16": []byte{1, 2}}})
	if h, ok := PeekRequest(cb, ContentTypeCBOR); !ok || h.ID != "y" || h.Cancel {
		t.Errorf("PeekRequest CBOR: %+v %v", h, ok)
	}
}

func TestContentID(t *testing.T) {
	a := ContentID("p/v1/req/d/m", []byte(`{"input":1}`))
	if a != ContentID("p/v1/req/d/m", []byte(`{"input":1}`)) {
		t.Error("not deterministic")
	}
	if a == ContentID("p/v1/req/d/m", []byte(`{"input":2}`)) || a == ContentID("p/v1/req/e/m", []byte(`{"input":1}`)) {
		t.Error("different requests share an id")
	}
	if len(a) > MaxRequestIDLen {
		t.Errorf("%q is too long", a)
	}
}
