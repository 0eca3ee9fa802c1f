package tests

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

var httpClient = &http.Client{Timeout: wait}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// mochi's per-connection goroutines end shortly after Close closes
		// their sockets; paho's keepalive ends with Disconnect.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

func TestAnomalyResult(t *testing.T) {
	cfg := testConfig(t)
	svc := startService(t, cfg)
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "sensor-1")

	d.request("anomaly", sample("r-1", 21.5))
	topic, r := d.reply()
	if want := topics.Result(cfg.Prefix, "v1", "sensor-1", "anomaly"); topic != want {
		t.Errorf("reply on %s, want %s", topic, want)
	}
	if r.Status != 200 || r.ID != "r-1" || r.Model != "anomaly" || r.ModelVersion == "" {
		t.Fatalf("result %+v", r)
	}
	var out struct {
		Sensor    string  `json:"sensor"`
		Value     float64 `json:"value"`
		WarmingUp bool    `json:"warming_up"`
		N         int     `json:"n"`
	}
	if err := json.Unmarshal(r.Output, &out); err != nil {
		t.Fatalf("output %s: %v", r.Output, err)
	}
	if out.Sensor != "temp" || out.Value != 21.5 || !out.WarmingUp || out.N != 1 {
		t.Errorf("output %s", r.Output)
	}
	if r.RateLimit == nil || r.RateLimit.Limit != cfg.Throttle.Burst || r.RateLimit.Remaining != cfg.Throttle.Burst-1 {
		t.Errorf("ratelimit %+v, want limit %d remaining %d", r.RateLimit, cfg.Throttle.Burst, cfg.Throttle.Burst-1)
	}

	// A request without an id gets one generated and echoed.
	d.request("anomaly", map[string]any{"input": map[string]any{"sensor": "temp", "value": 21.6}})
	if r := d.replyStatus(200); r.ID == "" {
		t.Error("no id generated for a request without one")
	}

	// The series is kept per device and sensor: a spike after a steady
	// warm-up is flagged.
	cfg2 := testConfig(t)
	cfg2.Throttle.Enabled = false
	svc2 := startService(t, cfg2)
	d2 := newDevice(t, svc2.MQTTAddr(), cfg2.Prefix, "sensor-2")
	for i := range 40 {
		d2.request("anomaly", sample("w", 20+0.1*float64(i%5)))
		d2.replyStatus(200)
	}
	d2.request("anomaly", sample("spike", 95))
	var spike struct {
		IsAnomaly bool `json:"is_anomaly"`
		WarmingUp bool `json:"warming_up"`
	}
	r = d2.replyStatus(200)
	if err := json.Unmarshal(r.Output, &spike); err != nil || !spike.IsAnomaly || spike.WarmingUp {
		t.Errorf("spike not flagged: %s", r.Output)
	}
}

func TestThrottlePerDevice(t *testing.T) {
	cfg := testConfig(t)
	smallBucket(&cfg, 0.5, 3) // one token per 2 s: nothing refills during the test
	svc := startService(t, cfg)
	a := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "dev-a")
	b := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "dev-b")

	for i := range 3 {
		a.request("anomaly", sample("a", 20))
		if r := a.replyStatus(200); r.RateLimit.Remaining != 2-i {
			t.Errorf("request %d: remaining %d, want %d", i, r.RateLimit.Remaining, 2-i)
		}
	}
	a.request("anomaly", sample("a-over", 20))
	r := a.replyStatus(429)
	if r.ID != "a-over" || r.Error.Type != api.RateLimited {
		t.Fatalf("429 reply %+v", r)
	}
	// retry_after_ms is computed from the bucket: at most one token's refill
	// time (2000 ms) and more than zero.
	if ra := r.Error.RetryAfterMS; ra <= 0 || ra > 2000 {
		t.Errorf("retry_after_ms %d, want in (0, 2000]", ra)
	}
	if !strings.Contains(r.Error.Message, "dev-a") || r.RateLimit == nil || r.RateLimit.Remaining != 0 {
		t.Errorf("429 reply %+v ratelimit %+v", r.Error, r.RateLimit)
	}

	// Another device is unaffected.
	b.request("anomaly", sample("b", 20))
	if r := b.replyStatus(200); r.RateLimit.Remaining != 2 {
		t.Errorf("dev-b remaining %d, want 2", r.RateLimit.Remaining)
	}
	if got := metricValue(t, svc.HTTPAddr(), `mqttinfer_throttled_total{reason="rate"}`); got != 1 {
		t.Errorf("throttled metric %v, want 1", got)
	}
}

func TestInFlightLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Throttle.MaxInFlight = 1
	cfg.Throttle.Burst = 100
	cfg.Throttle.Rate = 100
	cfg.Worker.Concurrency = 1
	svc := startService(t, cfg)
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "burst-dev")
	// A batch big enough to keep the one worker busy while the next arrive.
	vals := make([]float64, 10000)
	for i := range vals {
		vals[i] = float64(i % 7)
	}
	big := map[string]any{"id": "big", "input": map[string]any{"sensor": "s", "values": vals}}
	const n = 20
	for range n {
		d.request("anomaly", big)
	}
	var ok, limited int
	for range n {
		r := d.replyStatus0()
		switch r.Status {
		case 200:
			ok++
		case 429:
			limited++
			if !strings.Contains(r.Error.Message, "in flight") || r.Error.RetryAfterMS <= 0 {
				t.Errorf("in-flight 429: %+v", r.Error)
			}
		default:
			t.Errorf("status %d: %+v", r.Status, r.Error)
		}
	}
	if ok == 0 || limited == 0 || ok+limited != n {
		t.Errorf("ok %d, in-flight limited %d, of %d", ok, limited, n)
	}
}

func (d *device) replyStatus0() api.Result { _, r := d.reply(); return r }

func TestSpoofedDeviceID(t *testing.T) {
	cfg := testConfig(t)
	svc := startService(t, cfg)
	victim := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "victim")
	mallory := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "mallory")

	mallory.publish(topics.Request(cfg.Prefix, "v1", "victim", "anomaly"), mustJSON(t, sample("spoof", 1)))
	topic, r := mallory.reply()
	if want := topics.Result(cfg.Prefix, "v1", "mallory", "anomaly"); topic != want {
		t.Errorf("403 on %s, want the sender's own %s", topic, want)
	}
	if r.Status != 403 || r.Error.Type != api.Forbidden || r.ID != "spoof" {
		t.Fatalf("reply %+v", r)
	}
	// Nothing reached a worker: no inference ran and the victim heard nothing.
	// The victim's next real request is answered first, proving the order.
	victim.request("anomaly", sample("real", 1))
	if r := victim.replyStatus(200); r.ID != "real" {
		t.Errorf("victim got %+v", r)
	}
	if got := metricValue(t, svc.HTTPAddr(), `mqttinfer_inference_seconds_count{model="anomaly"}`); got != 1 {
		t.Errorf("inferences run: %v, want 1 (the spoofed request must not reach a worker)", got)
	}
	if got := metricValue(t, svc.HTTPAddr(), `mqttinfer_rejected_total{reason="forbidden"}`); got != 1 {
		t.Errorf("rejected forbidden: %v, want 1", got)
	}
}

func TestBadRequests(t *testing.T) {
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	cfg.MQTT.MaxRequestSize = 1024
	svc := startService(t, cfg)
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "bad-dev")
	req := topics.Request(cfg.Prefix, "v1", "bad-dev", "anomaly")

	cases := []struct {
		name    string
		topic   string
		payload string
		status  int
		typ     api.ErrorType
		id      string
		msg     string
	}{
		{"not json", req, `{"id":"x1", "input": `, 400, api.InvalidRequest, "x1", "malformed JSON"},
		{"not an object", req, `[1,2,3]`, 400, api.InvalidRequest, "", "not a JSON object"},
		{"wrong field type", req, `{"id":"x2","input":{},"stream":"yes"}`, 400, api.InvalidRequest, "x2", `"stream"`},
		{"missing input", req, `{"id":"x3"}`, 400, api.InvalidRequest, "x3", `"input"`},
		{"id too long", req, `{"id":"` + strings.Repeat("i", 65) + `","input":{}}`, 400, api.InvalidRequest, "", `"id"`},
		{"invalid input", req, `{"id":"x4","input":{"sensor":"temp","value":"hot"}}`, 422, api.InvalidInput, "x4", "value"},
		{"oversize", req, `{"id":"x5","input":{"pad":"` + strings.Repeat("a", 2000) + `"}}`, 413, api.PayloadTooLarge, "x5", "1024"},
		{"unknown model", topics.Request(cfg.Prefix, "v1", "bad-dev", "nope"), `{"id":"x6","input":{}}`, 404, api.ModelNotFound, "x6", "anomaly"},
		{"unknown version", topics.Request(cfg.Prefix, "v9", "bad-dev", "anomaly"), `{"id":"x7","input":{}}`, 404, api.UnsupportedVersion, "x7", "v9"},
		{"empty body", req, ``, 400, api.InvalidRequest, "", "empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d.t = t
			d.publish(c.topic, []byte(c.payload))
			topic, r := d.reply()
			if r.Status != c.status || r.Error == nil || r.Error.Type != c.typ {
				t.Fatalf("reply %+v (error %+v), want %d %s", r, r.Error, c.status, c.typ)
			}
			if r.ID != c.id {
				t.Errorf("id %q, want %q", r.ID, c.id)
			}
			if !strings.Contains(r.Error.Message, c.msg) {
				t.Errorf("message %q does not mention %q", r.Error.Message, c.msg)
			}
			// The error goes to the sender's own topic under the request's version.
			ver := strings.Split(c.topic, "/")[1]
			model := c.topic[strings.LastIndexByte(c.topic, '/')+1:]
			if want := topics.Result(cfg.Prefix, ver, "bad-dev", model); topic != want {
				t.Errorf("reply on %s, want %s", topic, want)
			}
			switch c.typ {
			case api.ModelNotFound:
				if !slices.Contains(r.Error.Models, "anomaly") {
					t.Errorf("404 lists models %v", r.Error.Models)
				}
			case api.UnsupportedVersion:
				if !slices.Equal(r.Error.Versions, topics.Versions()) {
					t.Errorf("404 lists versions %v", r.Error.Versions)
				}
			}
		})
	}
	d.t = t
	// v2 is its own entry and answers too.
	d.publish(topics.Request(cfg.Prefix, "v2", "bad-dev", "anomaly"), mustJSON(t, sample("v2", 3)))
	topic, r := d.reply()
	if r.Status != 200 || topic != topics.Result(cfg.Prefix, "v2", "bad-dev", "anomaly") {
		t.Errorf("v2: %s %+v", topic, r)
	}
	for _, reason := range []string{"invalid_request", "invalid_input", "payload_too_large", "model_not_found", "unsupported_version"} {
		if metricValue(t, svc.HTTPAddr(), `mqttinfer_requests_total{model="anomaly",status="`+map[string]string{
			"invalid_request": "400", "invalid_input": "422", "payload_too_large": "413", "model_not_found": "404", "unsupported_version": "404"}[reason]+`",version="v1"}`) == 0 &&
			reason != "model_not_found" && reason != "unsupported_version" {
			t.Errorf("no requests_total for %s", reason)
		}
	}
}

func TestOversizePacketDisconnects(t *testing.T) {
	cfg := testConfig(t)
	cfg.MQTT.MaxRequestSize = 1024
	cfg.MQTT.MaxPacketSize = 4096
	cfg.Models.VAD.MaxRequestSize, cfg.Models.OCR.MaxRequestSize, cfg.Models.Detect.MaxRequestSize = 2048, 2048, 2048
	svc := startService(t, cfg)
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "huge-dev")
	// Past the packet limit mochi resets the connection: the documented
	// clean disconnect, and the service keeps serving others.
	tok := d.c.Publish(topics.Request(cfg.Prefix, "v1", "huge-dev", "anomaly"), 1, false, bytes.Repeat([]byte("x"), 10000))
	tok.WaitTimeout(wait)
	deadline := time.Now().Add(wait)
	for d.c.IsConnectionOpen() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling a state paho exposes no event for
	}
	if d.c.IsConnectionOpen() {
		t.Fatal("connection still open after an oversize packet")
	}
	other := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "other-dev")
	other.request("anomaly", sample("ok", 1))
	other.replyStatus(200)
}

func TestHTTPEndpoints(t *testing.T) {
	cfg := testConfig(t)
	svc := startService(t, cfg)
	if got := httpGet(t, "http://"+svc.HTTPAddr()+"/healthz", 200); got != "ok\n" {
		t.Errorf("healthz %q", got)
	}
	if got := httpGet(t, "http://"+svc.HTTPAddr()+"/readyz", 200); !strings.Contains(got, `"ready":true`) {
		t.Errorf("readyz %s", got)
	}
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "metrics-dev")
	d.request("anomaly", sample("m", 1))
	d.replyStatus(200)
	if got := metricValue(t, svc.HTTPAddr(), `mqttinfer_requests_total{model="anomaly",status="200",version="v1"}`); got != 1 {
		t.Errorf("requests_total %v, want 1", got)
	}
	if got := metricValue(t, svc.HTTPAddr(), `mqttinfer_connected_clients`); got != 1 {
		t.Errorf("connected_clients %v, want 1", got)
	}
	if got := metricValue(t, svc.HTTPAddr(), `mqttinfer_worker_up{transport="in_process"}`); got != 1 {
		t.Errorf("worker_up %v, want 1", got)
	}
}

func TestCatalogAndStatusRetained(t *testing.T) {
	cfg := testConfig(t)
	svc := startService(t, cfg)
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "reader")
	d.subscribe(topics.Models(cfg.Prefix, "v1"))
	m := <-d.msgs
	var cat struct {
		Models []struct {
			Name, Version string
			Cost          int
		}
	}
	if err := json.Unmarshal(m.Payload(), &cat); err != nil || len(cat.Models) == 0 || cat.Models[0].Name != "anomaly" {
		t.Fatalf("catalog %s: %v", m.Payload(), err)
	}
	if !m.Retained() {
		t.Error("catalog not retained")
	}
	d.subscribe(topics.Status(cfg.Prefix, "v1", cfg.Node))
	m = <-d.msgs
	if !m.Retained() || !bytes.Contains(m.Payload(), []byte(`"state":"online"`)) {
		t.Errorf("status %s retained=%v", m.Payload(), m.Retained())
	}
}

// TestMosquittoClients drives the service with Debian's mosquitto_pub and
// mosquitto_sub: real MQTT clients nobody here wrote.
func TestMosquittoClients(t *testing.T) {
	requireTool(t, "/usr/bin/mosquitto_sub", "mosquitto-clients")
	cfg := testConfig(t)
	svc := startService(t, cfg)
	host, port, _ := strings.Cut(svc.MQTTAddr(), ":")

	// mosquitto_sub waits for exactly one message on its own result topic.
	// It listens under its own client id: two clients with the id cli-dev
	// would take over each other's connection.
	sub := exec.Command("mosquitto_sub", "-h", host, "-p", port, "-i", "cli-watch", "-q", "1", "-C", "1", "-W", "10",
		"-t", topics.Result(cfg.Prefix, "v1", "cli-dev", "anomaly"))
	var out bytes.Buffer
	sub.Stdout = &out
	sub.Stderr = &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	// Wait for the subscription to exist before publishing.
	waitFor(t, func() bool { return svc.HasSubscribers(topics.Result(cfg.Prefix, "v1", "cli-dev", "anomaly")) })

	pub := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-i", "cli-dev", "-q", "1",
		"-t", topics.Request(cfg.Prefix, "v1", "cli-dev", "anomaly"),
		"-m", `{"id":"from-cli","input":{"sensor":"temp","value":19.5}}`)
	if b, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, b)
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v: %s", err, out.String())
	}
	var r api.Result
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &r); err != nil {
		t.Fatalf("mosquitto_sub printed %q: %v", out.String(), err)
	}
	if r.Status != 200 || r.ID != "from-cli" {
		t.Errorf("result %+v", r)
	}
}

// waitFor polls cond until it holds; a safety net of wait.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within", wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
