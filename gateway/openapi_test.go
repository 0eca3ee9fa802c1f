package gateway

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// loadOpenAPI fetches /openapi.json and validates it as OpenAPI.
func loadOpenAPI(t *testing.T, e *env) *openapi3.T {
	t.Helper()
	resp, b := e.do(t, http.MethodGet, "/openapi.json", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	doc, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("validate: %v", err)
	}
	return doc
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	e := newEnv(t, envConfig{})
	doc := loadOpenAPI(t, e)

	patterns := []string{"GET /healthz", "GET /readyz", "GET /metrics"}
	for _, rt := range newGateway(Options{}).routes() {
		patterns = append(patterns, rt.pattern)
	}
	for _, p := range patterns {
		method, path, _ := strings.Cut(p, " ")
		item := doc.Paths.Value(path)
		if item == nil || item.GetOperation(method) == nil {
			t.Errorf("%s is not documented", p)
			continue
		}
		if op := item.GetOperation(method); op.Responses.Status(200) == nil {
			t.Errorf("%s: no 200 response documented", p)
		}
		if op := item.GetOperation(method); path != "/healthz" && path != "/readyz" && op.Responses.Status(401) == nil {
			t.Errorf("%s: 401 (with auth on) is not documented", p)
		}
	}

	ver := doc.Components.Parameters["ver"].Value.Schema.Value
	var enum []string
	for _, v := range ver.Enum {
		enum = append(enum, v.(string))
	}
	if !slices.Equal(enum, topics.Versions()) {
		t.Errorf("documented versions %v, want %v", enum, topics.Versions())
	}

	var types []string
	for _, v := range doc.Components.Schemas["ErrorType"].Value.Enum {
		types = append(types, v.(string))
	}
	for _, typ := range append(api.ErrorTypes(), unauthorized) {
		if !slices.Contains(types, string(typ)) {
			t.Errorf("error type %s is not documented", typ)
		}
	}

	infer := doc.Paths.Value("/{ver}/models/{model}/infer").Post
	for _, typ := range api.ErrorTypes() {
		if infer.Responses.Status(typ.Status()) == nil {
			t.Errorf("infer: status %d (%s) is not documented", typ.Status(), typ)
		}
	}
	for _, name := range []string{"Request", "Result", "Error", "Item", "StreamEvent", "Info", "Catalog", "RateLimit"} {
		if doc.Components.Schemas[name] == nil {
			t.Errorf("schema %s is missing", name)
		}
	}
	for _, status := range []int{200, 429} {
		h := infer.Responses.Status(status).Value.Headers
		for _, name := range []string{"RateLimit-Policy", "RateLimit"} {
			if h[name] == nil {
				t.Errorf("infer %d: header %s is not documented", status, name)
			}
		}
	}
	if infer.Responses.Status(429).Value.Headers["Retry-After"] == nil {
		t.Error("infer 429: Retry-After is not documented")
	}
	if infer.Responses.Status(200).Value.Content.Get("text/event-stream") == nil {
		t.Error("infer 200: the event stream is not documented")
	}
}

// TestOpenAPIMatchesAnswers sends real requests and validates each answer
// (status, content type, body) against the document.
func TestOpenAPIMatchesAnswers(t *testing.T) {
	e := newEnv(t, envConfig{throttle: &throttle.Config{Default: throttle.Limits{Rate: 1, Burst: 3}, Now: fixedClock}})
	router := documentRouter(t, e, e.srv.URL)
	tests := []answerCase{
		{"GET", "/v1/models", "", nil, 200},
		{"GET", "/v2/models/words", "", nil, 200},
		{"GET", "/v2/models/nope", "", nil, 404},
		{"GET", "/v9/models", "", nil, 404},
		{"GET", "/healthz", "", nil, 200},
		{"GET", "/readyz", "", nil, 200},
		{"POST", "/v1/models/sum/infer", `{"id":"a","input":{"numbers":[1,2]}}`, nil, 200},
		{"POST", "/v2/models/sum/infer", `{"inputs":[{"numbers":[1]},{"numbers":[]}]}`, []string{"X-Forwarded-For", "10.0.1.2"}, 200},
		{"POST", "/v2/models/words/infer", `{"input":{"text":"a b"}}`, []string{"X-Forwarded-For", "10.0.1.3"}, 200},
		{"POST", "/v1/models/sum/infer", `{"input":`, nil, 400},
		{"POST", "/v1/models/nope/infer", `{"input":{}}`, nil, 404},
		{"POST", "/v9/models/sum/infer", `{"input":{}}`, nil, 404},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[]}}`, nil, 422},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, nil, 200},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, nil, 429},
		{"POST", "/v2/models/sum/infer", `{"inputs":[{},{},{},{}]}`, []string{"X-Forwarded-For", "10.0.1.4"}, 413},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[1],"down":10}}`, []string{"X-Forwarded-For", "10.0.1.5"}, 503},
	}
	checkAnswers(t, e, router, tests)

	// With auth on: the refusals of the login and of the role.
	auth := newEnv(t, envConfig{opts: func(o *Options) { o.Auth = testAuth(t) }})
	router = documentRouter(t, e, auth.srv.URL)
	checkAnswers(t, auth, router, []answerCase{
		{"GET", "/v1/models", "", nil, 401},
		{"GET", "/v2/models/sum", "", basic("nobody"), 401},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, nil, 401},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, basic("ops"), 403},
		{"POST", "/v1/models/sum/infer", `{"input":{"numbers":[1]}}`, bearer(thermoKey), 200},
		{"GET", "/metrics", "", basic("thermo-1"), 403},
		{"GET", "/metrics", "", nil, 401},
		{"GET", "/openapi.json", "", nil, 401},
		{"GET", "/healthz", "", nil, 200},
	})
}

// answerCase is a request and the status its answer must have.
type answerCase struct {
	method, path, body string
	header             []string
	status             int
}

// documentRouter routes requests to url through the document e serves.
func documentRouter(t *testing.T, e *env, url string) routers.Router {
	t.Helper()
	doc := loadOpenAPI(t, e)
	doc.Servers = openapi3.Servers{{URL: url}} // the document's "/" is relative to where it is served
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return router
}

// checkAnswers sends each request and validates its answer (status,
// content type, body) against the document.
func checkAnswers(t *testing.T, e *env, router routers.Router, tests []answerCase) {
	t.Helper()
	for _, tt := range tests {
		var body []byte
		if tt.body != "" {
			body = []byte(tt.body)
		}
		header := append([]string{"Content-Type", "application/json"}, tt.header...)
		resp, b := e.do(t, tt.method, tt.path, body, header...)
		if resp.StatusCode != tt.status {
			t.Errorf("%s %s: %d, want %d: %s", tt.method, tt.path, resp.StatusCode, tt.status, b)
			continue
		}
		req, _ := http.NewRequest(tt.method, e.srv.URL+tt.path, bytes.NewReader(body))
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Errorf("%s %s: no documented route: %v", tt.method, tt.path, err)
			continue
		}
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
			Status:                 resp.StatusCode,
			Header:                 resp.Header,
			Options:                &openapi3filter.Options{IncludeResponseStatus: true},
		}
		in.SetBodyBytes(b)
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			t.Errorf("%s %s: answer %d %s does not match the document: %v", tt.method, tt.path, resp.StatusCode, b, err)
		}
	}
}
