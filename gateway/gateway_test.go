package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/topics"
)

func TestCatalogRoutes(t *testing.T) {
	e := newEnv(t, envConfig{})
	names := []string{"sum", "words"}
	for _, ver := range topics.Versions() {
		resp, b := e.do(t, http.MethodGet, "/"+ver+"/models", nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET /%s/models: %d %s", ver, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		want, _ := json.Marshal(e.models.Catalog())
		if !bytes.Equal(b, want) {
			t.Errorf("GET /%s/models = %s, want the retained catalog %s", ver, b, want)
		}

		resp, b = e.do(t, http.MethodGet, "/"+ver+"/models/words", nil)
		var info inference.Info
		if err := json.Unmarshal(b, &info); err != nil || resp.StatusCode != 200 || info.Name != "words" || !info.Streaming {
			t.Errorf("GET /%s/models/words: %d %s", ver, resp.StatusCode, b)
		}
	}

	tests := []struct {
		path     string
		typ      api.ErrorType
		model    string
		models   []string
		versions []string
	}{
		{"/v1/models/nope", api.ModelNotFound, "nope", names, nil},
		{"/v2/models/nope", api.ModelNotFound, "nope", names, nil},
		{"/v9/models", api.UnsupportedVersion, "", nil, topics.Versions()},
		{"/v9/models/sum", api.UnsupportedVersion, "sum", nil, topics.Versions()},
	}
	for _, tt := range tests {
		resp, b := e.do(t, http.MethodGet, tt.path, nil)
		var res api.Result
		if err := json.Unmarshal(b, &res); err != nil || resp.StatusCode != 404 || res.Status != 404 || res.Error == nil {
			t.Errorf("GET %s: %d %s", tt.path, resp.StatusCode, b)
			continue
		}
		if res.Error.Type != tt.typ || res.Model != tt.model || !slices.Equal(res.Error.Models, tt.models) || !slices.Equal(res.Error.Versions, tt.versions) {
			t.Errorf("GET %s: %s", tt.path, b)
		}
	}
}

// TestWithoutPool: the zero Options serve an empty catalog, and a gateway
// with models but no pool answers inference 503 model_unavailable.
func TestWithoutPool(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.Pool = nil }})
	resp, res := e.post(t, "/v1/models/sum/infer", `{"id":"np","input":{"numbers":[1]}}`)
	if resp.StatusCode != 503 || res.Error == nil || res.Error.Type != api.ModelUnavailable || res.ID != "np" {
		t.Errorf("without a pool: %d %+v", resp.StatusCode, res)
	}

	empty := newEnv(t, envConfig{opts: func(o *Options) { *o = Options{} }})
	if _, b := empty.do(t, http.MethodGet, "/v2/models", nil); string(b) != `{"models":[]}` {
		t.Errorf("empty catalog: %s", b)
	}
	if resp, res := empty.post(t, "/v2/models/sum/infer", `{"input":{}}`); resp.StatusCode != 404 || res.Error.Type != api.ModelNotFound {
		t.Errorf("no models: %d %+v", resp.StatusCode, res)
	}
	if g := newGateway(Options{}); g.maxBody != DefaultMaxBodySize {
		t.Errorf("default body limit %d", g.maxBody)
	}
}

func TestInfer(t *testing.T) {
	e := newEnv(t, envConfig{})
	big := `{"id":"big","input":{"numbers":[` + strings.Repeat("1,", 2100) + `1]}}` // over 4096 bytes
	tests := []struct {
		name    string
		path    string
		body    string
		header  []string
		status  int
		typ     api.ErrorType // "" for a result
		id      string        // "" for a generated id
		sum     float64
		device  string
		chunked bool
	}{
		{name: "v1", path: "/v1/models/sum/infer", body: `{"id":"r1","input":{"numbers":[1,2,3]}}`, status: 200, id: "r1", sum: 6, device: "ip-127-0-0-1"},
		{name: "v2 generated id", path: "/v2/models/sum/infer", body: `{"input":{"numbers":[0.5,0.25]}}`, status: 200, sum: 0.75, device: "ip-127-0-0-1"},
		{name: "X-API-Key names no client", path: "/v2/models/sum/infer", body: `{"id":"k","input":{"numbers":[1]}}`, header: []string{"X-API-Key", "alpha"}, status: 200, id: "k", sum: 1, device: "ip-127-0-0-1"},
		{name: "Bearer names no client without auth", path: "/v1/models/sum/infer", body: `{"id":"k","input":{"numbers":[1]}}`, header: []string{"Authorization", "Bearer alpha"}, status: 200, id: "k", sum: 1, device: "ip-127-0-0-1"},
		{name: "behind the proxy", path: "/v1/models/sum/infer", body: `{"id":"p","input":{"numbers":[1]}}`, header: []string{"X-Forwarded-For", "10.0.0.1"}, status: 200, id: "p", sum: 1, device: "ip-10-0-0-1"},
		{name: "no content type", path: "/v1/models/sum/infer", body: `{"id":"nc","input":{"numbers":[2]}}`, header: []string{"Content-Type", ""}, status: 200, id: "nc", sum: 2, device: "ip-127-0-0-1"},
		{name: "stream on a model that does not stream", path: "/v1/models/sum/infer", body: `{"id":"ns","input":{"numbers":[4]}}`, header: []string{"Accept", "text/event-stream"}, status: 200, id: "ns", sum: 4, device: "ip-127-0-0-1"},
		{name: "bad JSON", path: "/v1/models/sum/infer", body: `{"id":"bad1","input":`, status: 400, typ: api.InvalidRequest, id: "bad1"},
		{name: "not an object", path: "/v2/models/sum/infer", body: `[1,2]`, status: 400, typ: api.InvalidRequest},
		{name: "v1 rejects inputs", path: "/v1/models/sum/infer", body: `{"id":"b1","inputs":[{"numbers":[1]}]}`, status: 400, typ: api.InvalidRequest, id: "b1"},
		{name: "v1 rejects CBOR", path: "/v1/models/sum/infer", body: "\xa0", header: []string{"Content-Type", "application/cbor"}, status: 400, typ: api.InvalidRequest},
		{name: "bad stream parameter", path: "/v1/models/sum/infer?stream=maybe", body: `{"id":"q","input":{"numbers":[1]}}`, status: 400, typ: api.InvalidRequest, id: "q"},
		{name: "batch cannot stream", path: "/v2/models/words/infer?stream=true", body: `{"id":"bs","inputs":[{"text":"a"}]}`, status: 400, typ: api.InvalidRequest, id: "bs"},
		{name: "cancel of nothing", path: "/v2/models/words/infer", body: `{"id":"none","cancel":true}`, status: 400, typ: api.InvalidRequest, id: "none"},
		{name: "invalid input", path: "/v2/models/sum/infer", body: `{"id":"ii","input":{"numbers":[]}}`, status: 422, typ: api.InvalidInput, id: "ii"},
		{name: "unknown model", path: "/v2/models/nope/infer", body: `{"id":"um","input":{}}`, status: 404, typ: api.ModelNotFound, id: "um"},
		{name: "unknown version", path: "/v9/models/sum/infer", body: `{"id":"uv","input":{}}`, status: 404, typ: api.UnsupportedVersion, id: "uv"},
		{name: "oversize", path: "/v1/models/sum/infer", body: big, status: 413, typ: api.PayloadTooLarge},
		{name: "oversize chunked", path: "/v1/models/sum/infer", body: big, status: 413, typ: api.PayloadTooLarge, chunked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rd io.Reader = strings.NewReader(tt.body)
			if tt.chunked {
				rd = io.MultiReader(rd) // unknown length: sent chunked
			}
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+tt.path, rd)
			req.Header.Set("Content-Type", "application/json")
			for i := 0; i+1 < len(tt.header); i += 2 {
				req.Header.Set(tt.header[i], tt.header[i+1])
			}
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var res api.Result
			if err := json.Unmarshal(b, &res); err != nil {
				t.Fatalf("%d %q: %v", resp.StatusCode, b, err)
			}
			if resp.StatusCode != tt.status || res.Status != tt.status || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d (body %d, %s), want %d: %s", resp.StatusCode, res.Status, resp.Header.Get("Content-Type"), tt.status, b)
			}
			if tt.id != "" && res.ID != tt.id || tt.id == "" && tt.typ == "" && res.ID == "" {
				t.Errorf("id %q, want %q", res.ID, tt.id)
			}
			if tt.typ != "" {
				if res.Error == nil || res.Error.Type != tt.typ || res.Error.Message == "" {
					t.Fatalf("error %+v, want %s", res.Error, tt.typ)
				}
				switch tt.typ {
				case api.ModelNotFound:
					if !slices.Equal(res.Error.Models, []string{"sum", "words"}) {
						t.Errorf("models %v", res.Error.Models)
					}
				case api.UnsupportedVersion:
					if !slices.Equal(res.Error.Versions, topics.Versions()) {
						t.Errorf("versions %v", res.Error.Versions)
					}
				}
				return
			}
			var out sumOut
			if err := json.Unmarshal(res.Output, &out); err != nil || out.Sum != tt.sum || out.Device != tt.device || res.ModelVersion != "1" {
				t.Errorf("result %s", b)
			}
			if strings.Contains(string(b), "alpha") {
				t.Errorf("the API key leaked into the reply: %s", b)
			}
		})
	}

	resp, _ := e.do(t, http.MethodGet, "/v1/models/sum/infer", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET infer: %d", resp.StatusCode)
	}

	// The pool counts what it answered; the gateway counts its refusals.
	if n := e.counter(t, "mqttinfer_requests_total", map[string]string{"version": "v1", "model": "sum", "status": "200"}); n != 5 {
		t.Errorf("v1 sum 200 counted %v times, want 5", n)
	}
	if n := e.counter(t, "mqttinfer_requests_total", map[string]string{"version": "v2", "model": "sum", "status": "422"}); n != 1 {
		t.Errorf("v2 sum 422 counted %v times, want 1", n)
	}
	for typ, want := range map[api.ErrorType]float64{api.InvalidRequest: 7, api.ModelNotFound: 1, api.UnsupportedVersion: 1, api.PayloadTooLarge: 2} {
		if n := e.counter(t, "mqttinfer_rejected_total", map[string]string{"reason": string(typ)}); n != want {
			t.Errorf("rejected %s counted %v times, want %v", typ, n, want)
		}
	}
}

func TestBatchV2(t *testing.T) {
	e := newEnv(t, envConfig{})
	resp, res := e.post(t, "/v2/models/sum/infer", `{"id":"b","inputs":[{"numbers":[1,2]},{"numbers":[]},{"numbers":[3]}]}`)
	if resp.StatusCode != 200 || res.Status != 200 || res.ID != "b" || len(res.Outputs) != 3 || res.Output != nil {
		t.Fatalf("batch: %d %+v", resp.StatusCode, res)
	}
	for i, want := range []struct {
		status int
		sum    float64
	}{{200, 3}, {422, 0}, {200, 3}} {
		it := res.Outputs[i]
		if it.Status != want.status {
			t.Errorf("item %d: status %d, want %d", i, it.Status, want.status)
			continue
		}
		if want.status != 200 {
			if it.Error == nil || it.Error.Type != api.InvalidInput || it.Output != nil {
				t.Errorf("item %d: %+v", i, it)
			}
			continue
		}
		var out sumOut
		if err := json.Unmarshal(it.Output, &out); err != nil || out.Sum != want.sum {
			t.Errorf("item %d: output %s", i, it.Output)
		}
	}
}

func TestCBOR(t *testing.T) {
	e := newEnv(t, envConfig{})
	body, err := cbor.Marshal(map[string]any{"id": "c1", "input": map[string]any{"numbers": []float64{1.5, 2}}})
	if err != nil {
		t.Fatal(err)
	}
	decode := func(t *testing.T, b []byte) api.Result {
		t.Helper()
		dm, err := cbor.DecOptions{DefaultMapType: reflect.TypeFor[map[string]any]()}.DecMode()
		if err != nil {
			t.Fatal(err)
		}
		var generic any
		if err := dm.Unmarshal(b, &generic); err != nil {
			t.Fatalf("reply %x is not CBOR: %v", b, err)
		}
		js, err := json.Marshal(generic)
		if err != nil {
			t.Fatal(err)
		}
		var res api.Result
		if err := json.Unmarshal(js, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	tests := []struct {
		name     string
		path     string
		body     []byte
		header   []string
		wantCBOR bool
	}{
		{"CBOR in, CBOR out", "/v2/models/sum/infer", body, []string{"Content-Type", "application/cbor"}, true},
		{"JSON in, Accept CBOR", "/v2/models/sum/infer", []byte(`{"id":"c1","input":{"numbers":[1.5,2]}}`), []string{"Content-Type", "application/json", "Accept", "application/cbor"}, true},
		{"CBOR in, Accept JSON", "/v2/models/sum/infer", body, []string{"Content-Type", "application/cbor", "Accept", "application/json"}, false},
		{"CBOR preferred by q", "/v2/models/sum/infer", body, []string{"Content-Type", "application/cbor", "Accept", "application/json;q=0.5, application/cbor"}, true},
		{"v1 answers JSON", "/v1/models/sum/infer", []byte(`{"id":"c1","input":{"numbers":[1.5,2]}}`), []string{"Content-Type", "application/json", "Accept", "application/cbor"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := e.do(t, http.MethodPost, tt.path, tt.body, tt.header...)
			var res api.Result
			if tt.wantCBOR {
				if ct := resp.Header.Get("Content-Type"); ct != "application/cbor" {
					t.Fatalf("Content-Type %q: %q", ct, b)
				}
				res = decode(t, b)
			} else {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Fatalf("Content-Type %q", ct)
				}
				if err := json.Unmarshal(b, &res); err != nil {
					t.Fatal(err)
				}
			}
			var out sumOut
			if err := json.Unmarshal(res.Output, &out); resp.StatusCode != 200 || res.ID != "c1" || err != nil || out.Sum != 3.5 {
				t.Errorf("%d %+v", resp.StatusCode, res)
			}
		})
	}

	// A CBOR error is CBOR too, with the same fields.
	resp, b := e.do(t, http.MethodPost, "/v2/models/sum/infer", []byte{0xff}, "Content-Type", "application/cbor")
	if res := decode(t, b); resp.StatusCode != 400 || res.Error == nil || res.Error.Type != api.InvalidRequest {
		t.Errorf("bad CBOR: %d %+v", resp.StatusCode, res)
	}
}

func TestClientID(t *testing.T) {
	tests := []struct {
		remote string
		header []string
		trust  bool
		want   string
	}{
		{"127.0.0.1:5000", nil, false, "ip-127-0-0-1"},
		{"[::1]:5000", nil, false, "ip-__1"},
		{"[::ffff:10.0.0.1]:5000", nil, false, "ip-10-0-0-1"},
		{"[fe80::1%eth0]:5000", nil, false, "ip-fe80__1"},
		{"garbage", nil, false, "ip-unknown"},
		{"127.0.0.1:5000", []string{"X-Forwarded-For", "203.0.113.9, 198.51.100.7"}, false, "ip-127-0-0-1"},
		{"127.0.0.1:5000", []string{"X-Forwarded-For", "203.0.113.9, 198.51.100.7"}, true, "ip-198-51-100-7"},
		{"127.0.0.1:5000", []string{"X-Forwarded-For", "203.0.113.9", "X-Forwarded-For", "2001:db8::7, junk"}, true, "ip-2001_db8__7"},
		{"127.0.0.1:5000", []string{"X-Forwarded-For", "junk"}, true, "ip-127-0-0-1"},
		// Headers a client chooses name no client: a new key per request
		// would be a new bucket per request.
		{"127.0.0.1:5000", []string{"Authorization", "Bearer alpha"}, false, "ip-127-0-0-1"},
		{"127.0.0.1:5000", []string{"X-API-Key", "beta"}, true, "ip-127-0-0-1"},
		{"127.0.0.1:5000", []string{"Authorization", "Basic YTpi", "X-API-Key", "beta"}, false, "ip-127-0-0-1"},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
		r.RemoteAddr = tt.remote
		for i := 0; i+1 < len(tt.header); i += 2 {
			r.Header.Add(tt.header[i], tt.header[i+1])
		}
		got := ClientID(r, tt.trust)
		if got != tt.want {
			t.Errorf("ClientID(%s %v trust=%v) = %q, want %q", tt.remote, tt.header, tt.trust, got, tt.want)
		}
		if err := topics.ValidID(got); err != nil {
			t.Errorf("ClientID %q is not a valid device id: %v", got, err)
		}
	}

	// Behind a trusted proxy, over a real socket.
	e := newEnv(t, envConfig{opts: func(o *Options) { o.TrustProxy = true }})
	_, res := e.post(t, "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, "X-Forwarded-For", "203.0.113.9, 198.51.100.7")
	var out sumOut
	if err := json.Unmarshal(res.Output, &out); err != nil || out.Device != "ip-198-51-100-7" {
		t.Errorf("device behind a proxy: %s", res.Output)
	}
}
