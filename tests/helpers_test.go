// Package tests holds the end-to-end tests: the real service assembly (or the
// real binary) over real sockets on 127.0.0.1, driven by real MQTT clients.
package tests

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/service"
	"github.com/mqttinfer/mqttinfer/topics"
)

// wait bounds every wait for a message in these tests. It is a safety net
// against a hang, not a timing assertion: everything normally arrives in
// milliseconds.
const wait = 10 * time.Second

// testConfig is the default configuration on random loopback ports.
func testConfig(t testing.TB) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Node = "test-node"
	cfg.MQTT.TCPAddr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = ""
	cfg.HTTP.Addr = "127.0.0.1:0"
	// Without the ONNX models a node starts in milliseconds; the tests of
	// those models ask for them with withModels.
	cfg.Models.Dir = filepath.Join(t.TempDir(), "no-models")
	return cfg
}

// withModels points cfg at the models `make models` fetched.
func withModels(cfg *config.Config) {
	cfg.Models.Dir = filepath.Join("..", ".cache", "models")
}

// smallBucket gives every device a bucket of burst tokens refilled at rate
// per second, and makes every model cost one token, so that a test can count
// requests (the ONNX models cost more than one by default, more than such a
// small bucket holds).
func smallBucket(cfg *config.Config, rate float64, burst int) {
	cfg.Throttle.Rate, cfg.Throttle.Burst = rate, burst
	cfg.Models.Costs = unitCosts()
}

func unitCosts() map[string]int {
	costs := map[string]int{}
	for _, m := range service.KnownModels() {
		costs[m] = 1
	}
	return costs
}

// unitCostsEnv is unitCosts for a process's environment.
func unitCostsEnv() string {
	var parts []string
	for _, m := range service.KnownModels() {
		parts = append(parts, m+": 1")
	}
	return "MQTTINFER_MODELS_COSTS={" + strings.Join(parts, ", ") + "}"
}

// startService starts the real service assembly and stops it at cleanup.
func startService(t testing.TB, cfg config.Config) *service.Service {
	t.Helper()
	if err := cfg.Validate(service.KnownModels()); err != nil {
		t.Fatalf("config: %v", err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc, err := service.New(cfg, log)
	if err != nil {
		t.Fatalf("service.New: %v", err)
	}
	if err := svc.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return svc
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// device is a real MQTT 3.1.1 client (paho) subscribed to its own results.
type device struct {
	t      testing.TB
	id     string
	prefix string
	c      paho.Client
	msgs   chan paho.Message
}

func connect(t testing.TB, addr, clientID string, opts ...func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(clientID).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(wait)
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// newDevice connects a device with client id id and subscribes to all of
// its result topics (every version and model) at QoS 1.
func newDevice(t testing.TB, addr, prefix, id string) *device {
	t.Helper()
	d := &device{t: t, id: id, prefix: prefix, msgs: make(chan paho.Message, 1024)}
	d.c = connect(t, addr, id)
	d.subscribe(topics.ResultFilter(prefix, "", id, ""))
	return d
}

func (d *device) subscribe(filter string) {
	d.t.Helper()
	tok := d.c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { d.msgs <- m })
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		d.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// publish sends a payload at QoS 1 and fails the test unless the broker
// acknowledges it: a QoS 1 publisher must always get its PUBACK.
func (d *device) publish(topic string, payload []byte) {
	d.t.Helper()
	tok := d.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(wait) {
		d.t.Fatalf("no PUBACK for a QoS 1 publish on %s within %s", topic, wait)
	}
	if tok.Error() != nil {
		d.t.Fatalf("publish on %s: %v", topic, tok.Error())
	}
}

// request publishes body on the device's own v1 request topic for model.
func (d *device) request(model string, body any) {
	d.t.Helper()
	d.publish(topics.Request(d.prefix, "v1", d.id, model), mustJSON(d.t, body))
}

// reply waits for the next message on the device's result topics.
func (d *device) reply() (string, api.Result) {
	d.t.Helper()
	select {
	case m := <-d.msgs:
		var r api.Result
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			d.t.Fatalf("reply on %s is not a result: %v: %s", m.Topic(), err, m.Payload())
		}
		return m.Topic(), r
	case <-time.After(wait):
		d.t.Fatalf("device %s: no reply within %s", d.id, wait)
		return "", api.Result{}
	}
}

// replyStatus waits for a reply and checks its status.
func (d *device) replyStatus(want int) api.Result {
	d.t.Helper()
	_, r := d.reply()
	if r.Status != want {
		d.t.Fatalf("device %s: status %d (%+v), want %d", d.id, r.Status, r.Error, want)
	}
	return r
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	if b, ok := v.([]byte); ok {
		return b
	}
	if s, ok := v.(string); ok {
		return []byte(s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sample is a valid anomaly request body.
func sample(id string, v float64) map[string]any {
	return map[string]any{"id": id, "input": map[string]any{"sensor": "temp", "value": v}}
}

// metricValue scrapes /metrics and returns the value of the series whose
// name and labels are given as they appear in the text format, 0 if absent.
func metricValue(t testing.TB, httpAddr, series string) float64 {
	t.Helper()
	body := httpGet(t, "http://"+httpAddr+"/metrics", 200)
	for _, line := range splitLines(body) {
		if len(line) > len(series) && line[:len(series)] == series && line[len(series)] == ' ' {
			v, err := strconv.ParseFloat(line[len(series)+1:], 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func httpGet(t testing.TB, url string, want int) string {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d: %s", url, resp.StatusCode, want, b)
	}
	return string(b)
}

// freePort returns a free TCP port on 127.0.0.1 for programs that cannot be
// told to pick one themselves.
func freePort(t *testing.T) int { return testenv.FreePort(t) }

// requireTool skips when a Debian-packaged tool is missing, unless the
// Makefile asked for every real-data dependency (MQTTINFER_REQUIRE_TESTDATA).
func requireTool(t *testing.T, path, pkg string) { testenv.Require(t, path, pkg) }
