package gateway

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// thermoKey is an API key of thermo-1 (see config.NewAPIKey).
const thermoKey = config.APIKeyPrefix + "thermo-1_" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// testAuth knows thermo-1 and thermo-2 (devices), ops (observer) and w1
// (worker), each with the password "pw-" and its name, thermo-1 also with
// thermoKey; hashes at the lowest cost.
func testAuth(t testing.TB) *config.Authenticator {
	t.Helper()
	hash := func(s string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(s), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	_, secret, ok := config.ParseAPIKey(thermoKey)
	if !ok {
		t.Fatal("thermoKey is not an API key")
	}
	a, err := config.NewAuthenticator([]config.Credential{
		{Username: "thermo-1", PasswordHash: hash("pw-thermo-1"), Role: config.RoleDevice, APIKeys: []string{hash(string(secret))}},
		{Username: "thermo-2", PasswordHash: hash("pw-thermo-2"), Role: config.RoleDevice},
		{Username: "ops", PasswordHash: hash("pw-ops"), Role: config.RoleObserver},
		{Username: "w1", PasswordHash: hash("pw-w1"), Role: config.RoleWorker},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// basic is the header of HTTP Basic for user with its test password, or
// with password when given.
func basic(user string, password ...string) []string {
	pw := "pw-" + user
	if len(password) > 0 {
		pw = password[0]
	}
	return []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))}
}

func bearer(key string) []string { return []string{"Authorization", "Bearer " + key} }

func TestAuth(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.Auth = testAuth(t); o.Pprof = true }})
	sum := `{"id":"a","input":{"numbers":[1]}}`
	tests := []struct {
		name, method, path string
		header             []string
		status             int
		device             string // who the model saw, for a 200 inference
	}{
		{"no login", "POST", "/v1/models/sum/infer", nil, 401, ""},
		{"device, Basic", "POST", "/v1/models/sum/infer", basic("thermo-1"), 200, "thermo-1"},
		{"device, API key", "POST", "/v2/models/sum/infer", bearer(thermoKey), 200, "thermo-1"},
		{"other device", "POST", "/v1/models/sum/infer", basic("thermo-2"), 200, "thermo-2"},
		{"observer infers", "POST", "/v1/models/sum/infer", basic("ops"), 403, ""},
		{"worker infers", "POST", "/v1/models/sum/infer", basic("w1"), 403, ""},
		{"wrong password", "POST", "/v1/models/sum/infer", basic("thermo-1", "pw-thermo-2"), 401, ""},
		{"unknown user", "POST", "/v1/models/sum/infer", basic("nobody"), 401, ""},
		{"unknown key", "POST", "/v1/models/sum/infer", bearer(strings.Replace(thermoKey, "0123", "3210", 1)), 401, ""},
		{"another user's key", "POST", "/v1/models/sum/infer", bearer(strings.Replace(thermoKey, "thermo-1", "thermo-2", 1)), 401, ""},
		{"not a key", "POST", "/v1/models/sum/infer", bearer("alpha"), 401, ""},
		{"the password as a key", "POST", "/v1/models/sum/infer", bearer("pw-thermo-1"), 401, ""},
		{"X-API-Key is no login", "POST", "/v1/models/sum/infer", []string{"X-API-Key", thermoKey}, 401, ""},
		{"other scheme", "POST", "/v1/models/sum/infer", []string{"Authorization", "Digest x"}, 401, ""},
		{"bad Basic", "POST", "/v1/models/sum/infer", []string{"Authorization", "Basic !!!"}, 401, ""},

		{"catalog, no login", "GET", "/v1/models", nil, 401, ""},
		{"catalog, device", "GET", "/v1/models", basic("thermo-1"), 200, ""},
		{"catalog, observer", "GET", "/v2/models/sum", basic("ops"), 200, ""},
		{"catalog, worker", "GET", "/v1/models", basic("w1"), 200, ""},
		{"unknown version, no login", "GET", "/v9/models", nil, 401, ""},
		{"openapi, no login", "GET", "/openapi.json", nil, 401, ""},
		{"openapi, device", "GET", "/openapi.json", bearer(thermoKey), 200, ""},

		{"healthz", "GET", "/healthz", nil, 200, ""},
		{"readyz", "GET", "/readyz", nil, 200, ""},
		{"metrics, no login", "GET", "/metrics", nil, 401, ""},
		{"metrics, device", "GET", "/metrics", basic("thermo-1"), 403, ""},
		{"metrics, observer", "GET", "/metrics", basic("ops"), 200, ""},
		{"metrics, worker", "GET", "/metrics", basic("w1"), 200, ""},
		{"pprof, no login", "GET", "/debug/pprof/cmdline", nil, 401, ""},
		{"pprof, device", "GET", "/debug/pprof/cmdline", basic("thermo-1"), 403, ""},
		{"pprof, observer", "GET", "/debug/pprof/cmdline", basic("ops"), 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.method == "POST" {
				body = []byte(sum)
			}
			resp, b := e.do(t, tt.method, tt.path, body, append([]string{"Content-Type", "application/json"}, tt.header...)...)
			if resp.StatusCode != tt.status {
				t.Fatalf("%d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if got := resp.Header.Get("WWW-Authenticate"); (tt.status == 401) != (got != "") || got != "" && got != `Basic realm="mqttinfer", Bearer` {
				t.Errorf("WWW-Authenticate %q", got)
			}
			var res api.Result
			switch {
			case tt.status == 401 || tt.status == 403:
				want := map[int]api.ErrorType{401: "unauthorized", 403: api.Forbidden}[tt.status]
				if err := json.Unmarshal(b, &res); err != nil || res.Status != tt.status || res.Error == nil || res.Error.Type != want || res.Error.Message == "" {
					t.Errorf("body %s, want a %s error", b, want)
				}
				if strings.Contains(string(b), "pw-") || strings.Contains(string(b), "0123456789") {
					t.Errorf("a secret in the answer: %s", b)
				}
			case tt.device != "":
				var out sumOut
				if err := json.Unmarshal(b, &res); err != nil || json.Unmarshal(res.Output, &out) != nil || out.Device != tt.device {
					t.Errorf("result %s, want device %s", b, tt.device)
				}
			}
		})
	}
	if n := e.counter(t, "mqttinfer_rejected_total", map[string]string{"reason": "unauthorized"}); n != 15 {
		t.Errorf("unauthorized counted %v times, want 15", n)
	}
}

// TestThrottleFollowsIdentity: a client's token bucket is its identity,
// never a header it picks: a new random X-API-Key (or Bearer token without
// auth) per request does not get it a new bucket.
func TestThrottleFollowsIdentity(t *testing.T) {
	limits := &throttle.Config{Default: throttle.Limits{Rate: 1, Burst: 3}, Now: fixedClock}
	sum := `{"input":{"numbers":[1]}}`
	random := func() []string { return []string{"X-API-Key", fmt.Sprintf("k%d", rand.Int())} }

	t.Run("with auth", func(t *testing.T) {
		e := newEnv(t, envConfig{throttle: limits, opts: func(o *Options) { o.Auth = testAuth(t) }})
		logins := [][]string{basic("thermo-1"), bearer(thermoKey), basic("thermo-1")}
		for i, login := range logins {
			if resp, res := e.post(t, "/v1/models/sum/infer", sum, append(random(), login...)...); resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %+v", i, resp.StatusCode, res.Error)
			}
		}
		resp, res := e.post(t, "/v1/models/sum/infer", sum, append(random(), bearer(thermoKey)...)...)
		if resp.StatusCode != 429 || !strings.Contains(res.Error.Message, "thermo-1") {
			t.Errorf("over the burst: %d %+v", resp.StatusCode, res.Error)
		}
		// From another address, as another device: another bucket.
		if resp, _ := e.post(t, "/v1/models/sum/infer", sum, append([]string{"X-Forwarded-For", "10.9.9.9"}, basic("thermo-1")...)...); resp.StatusCode != 429 {
			t.Errorf("thermo-1 from another address: %d", resp.StatusCode)
		}
		if resp, _ := e.post(t, "/v1/models/sum/infer", sum, basic("thermo-2")...); resp.StatusCode != 200 {
			t.Errorf("thermo-2: %d", resp.StatusCode)
		}
	})
	t.Run("without auth", func(t *testing.T) {
		e := newEnv(t, envConfig{throttle: limits})
		for i := range 3 {
			if resp, _ := e.post(t, "/v1/models/sum/infer", sum, random()...); resp.StatusCode != 200 {
				t.Fatalf("request %d: %d", i, resp.StatusCode)
			}
		}
		for _, h := range [][]string{random(), bearer(fmt.Sprint(rand.Int()))} {
			if resp, res := e.post(t, "/v1/models/sum/infer", sum, h...); resp.StatusCode != 429 || !strings.Contains(res.Error.Message, "ip-127-0-0-1") {
				t.Errorf("with %v: %d %+v", h, resp.StatusCode, res.Error)
			}
		}
	})
}

// TestRefusedHTTPLoginsLogged: a refused login is an INFO line with the
// username, remote address and reason; a flood of them is cut to a burst.
func TestRefusedHTTPLoginsLogged(t *testing.T) {
	log := &testenv.LogBuffer{}
	e := newEnv(t, envConfig{opts: func(o *Options) {
		o.Auth = testAuth(t)
		o.Log = log.Logger()
	}})
	for _, c := range []struct {
		header       []string
		user, reason string
	}{
		{basic("thermo-1", "nope"), "thermo-1", "wrong password"},
		{basic("nobody"), "nobody", "unknown user"},
		{bearer(strings.Replace(thermoKey, "0123", "3210", 1)), "thermo-1", "unknown API key"},
		{nil, "", "no credentials"},
	} {
		if resp, _ := e.do(t, "GET", "/v1/models", nil, c.header...); resp.StatusCode != 401 {
			t.Fatalf("%v: %d", c.header, resp.StatusCode)
		}
		lines := log.Lines(`reason="` + c.reason + `"`)
		if len(lines) != 1 {
			t.Fatalf("%d lines with reason %q", len(lines), c.reason)
		}
		user := c.user
		if user == "" {
			user = `""`
		}
		for _, want := range []string{"level=INFO", `msg="http login refused"`, "username=" + user + " ", "remote=127.0.0.1 ", "path=/v1/models"} {
			if !strings.Contains(lines[0], want) {
				t.Errorf("line %q lacks %q", lines[0], want)
			}
		}
	}
	for range 50 {
		e.do(t, "GET", "/v1/models", nil)
	}
	if n := len(log.Lines("http login refused")); n > 12 {
		t.Errorf("%d lines for 54 refused logins", n)
	}
}
