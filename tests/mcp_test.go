package tests

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
)

// series is a telemetry batch with a spike at its end: the anomaly model
// flags it (its decisions start at the 20th sample).
func series(sensor string) map[string]any {
	var values []float64
	for i := range 30 {
		values = append(values, 20+0.1*float64(i%5))
	}
	values = append(values, 90)
	return map[string]any{"sensor": sensor, "values": values}
}

// mcpSession connects the SDK's client over transport and closes it at cleanup.
func mcpSession(t *testing.T, transport mcp.Transport) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "mqttinfer-test", Version: "1"}, nil)
	s, err := c.Connect(ctx, transport, nil)
	if err != nil {
		t.Fatalf("MCP connect: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// callTool calls a tool and returns its result and structured content.
func callTool(t *testing.T, s *mcp.ClientSession, name string, args any) (*mcp.CallToolResult, json.RawMessage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("tool %s: %v", name, err)
	}
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	return res, b
}

// inferTool runs the infer tool and returns the api.Result it carries.
func inferTool(t *testing.T, s *mcp.ClientSession, model string, input any) (api.Result, bool) {
	t.Helper()
	res, b := callTool(t, s, "infer", map[string]any{"model": model, "input": input})
	var r api.Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("infer %s: structured content is not a result: %v: %s", model, err, b)
	}
	return r, res.IsError
}

// TestMCP speaks MCP with the SDK's client to both transports: `mqttinfer
// mcp` on stdio (the real binary, calling the service's gateway) and /mcp on
// the service's HTTP port. Each lists the tools, runs anomaly and detect (a
// real photo) and gets what a device gets over MQTT, and a bad input is a
// tool error with the wire contract's type.
func TestMCP(t *testing.T) {
	const photo = "/usr/share/darknet/data/dog.jpg"
	requireTool(t, photo, "darknet")
	jpg, err := os.ReadFile(photo)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	withModels(&cfg)
	cfg.Throttle.Enabled = false
	svc := startService(t, cfg)
	requireModel(t, svc, "detect")
	base := "http://" + svc.HTTPAddr()

	// What a device gets over MQTT: the reference.
	dev := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "mcp-ref")
	image := map[string]any{"image": base64.StdEncoding.EncodeToString(jpg)}
	dev.request("detect", map[string]any{"id": "d", "input": image})
	wantDetect := dev.replyStatus(200).Output

	transports := []struct {
		name string
		t    func() mcp.Transport
	}{
		{"stdio", func() mcp.Transport {
			return &mcp.CommandTransport{Command: exec.Command(binary(t), "mcp", "--server", base)}
		}},
		{"http", func() mcp.Transport {
			return &mcp.StreamableClientTransport{Endpoint: base + "/mcp", HTTPClient: httpClient, MaxRetries: -1}
		}},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			s := mcpSession(t, tr.t())
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			tools, err := s.ListTools(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, tool := range tools.Tools {
				names = append(names, tool.Name)
			}
			for _, want := range []string{"list_models", "infer", "list_devices", "device_results", "recent_anomalies"} {
				if !slices.Contains(names, want) {
					t.Errorf("tools %v: no %s", names, want)
				}
			}
			if _, b := callTool(t, s, "list_models", map[string]any{}); !json.Valid(b) || !containsAll(string(b), `"name":"detect"`, `"input_schema"`) {
				t.Errorf("list_models: %s", b)
			}
			rr, err := s.ReadResource(ctx, &mcp.ReadResourceParams{URI: "mqttinfer://catalog"})
			if err != nil || len(rr.Contents) != 1 || !containsAll(rr.Contents[0].Text, `"name":"anomaly"`) {
				t.Errorf("catalog resource: %v %+v", err, rr)
			}

			// anomaly: the same series from a device over MQTT and over MCP
			// (each its own, new series) gives the same output.
			sensor := "temp-" + tr.name
			dev.request("anomaly", map[string]any{"id": "a-" + tr.name, "input": series(sensor)})
			want := dev.replyStatus(200)
			got, isErr := inferTool(t, s, "anomaly", series(sensor))
			if isErr || got.Status != 200 || !jsonEqual(got.Output, want.Output) {
				t.Errorf("anomaly over MCP: error %v, %d %s\nover MQTT: %s", isErr, got.Status, got.Output, want.Output)
			}
			if !containsAll(string(got.Output), `"is_anomaly":true`) {
				t.Errorf("the spike is not flagged: %s", got.Output)
			}
			got, isErr = inferTool(t, s, "detect", image)
			if isErr || got.Status != 200 || !jsonEqual(got.Output, wantDetect) {
				t.Errorf("detect over MCP: error %v, %d %s\nover MQTT: %s", isErr, got.Status, got.Output, wantDetect)
			}

			// A bad input: a tool error carrying the wire contract's error.
			got, isErr = inferTool(t, s, "detect", map[string]any{"image": "not base64!"})
			if !isErr || got.Status != 422 || got.Error == nil || got.Error.Type != api.InvalidInput {
				t.Errorf("bad input: isError %v, %+v", isErr, got)
			}
			if got, isErr = inferTool(t, s, "no-such-model", map[string]any{}); !isErr || got.Error == nil || got.Error.Type != api.ModelNotFound {
				t.Errorf("unknown model: isError %v, %+v", isErr, got)
			}

			// The fleet: the MQTT device is listed with its last result,
			// and its anomalies.
			if _, b := callTool(t, s, "list_devices", map[string]any{}); !containsAll(string(b), `"id":"mcp-ref"`, `"last_result"`) {
				t.Errorf("list_devices: %s", b)
			}
			if _, b := callTool(t, s, "device_results", map[string]any{"device": "mcp-ref", "limit": 1}); !containsAll(string(b), `"model":"anomaly"`, `"id":"a-`+tr.name+`"`) {
				t.Errorf("device_results: %s", b)
			}
			if _, b := callTool(t, s, "recent_anomalies", map[string]any{}); !containsAll(string(b), `"device":"mcp-ref"`, `"sensor":"`+sensor+`"`) {
				t.Errorf("recent_anomalies: %s", b)
			}
		})
	}
}

// TestMCPAuth: with auth on, /mcp wants the same login as HTTP, and each
// tool is for the roles of the route it calls: a device runs models, an
// observer sees the fleet, and neither does the other's (forbidden).
func TestMCPAuth(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.Enabled = true
	cfg.Auth.CredentialsFile = writeCredentials(t, map[string]config.Role{"dev1": config.RoleDevice, "obs": config.RoleObserver})
	svc := startService(t, cfg)
	endpoint := "http://" + svc.HTTPAddr() + "/mcp"

	resp, err := httpClient.Post(endpoint, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/mcp without a login: %d, want 401", resp.StatusCode)
	}

	as := func(user string) *mcp.ClientSession {
		hc := &http.Client{Transport: basicAuth{user, user + "-pw"}}
		return mcpSession(t, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: hc, MaxRetries: -1})
	}
	device, observer := as("dev1"), as("obs")
	if got, isErr := inferTool(t, device, "anomaly", map[string]any{"sensor": "s", "value": 1}); isErr || got.Status != 200 {
		t.Errorf("a device runs a model: %v %+v", isErr, got)
	}
	if got, isErr := inferTool(t, observer, "anomaly", map[string]any{"sensor": "s", "value": 1}); !isErr || got.Error == nil || got.Error.Type != api.Forbidden {
		t.Errorf("an observer runs a model: %v %+v, want forbidden", isErr, got)
	}
	if res, b := callTool(t, observer, "list_devices", map[string]any{}); res.IsError || !containsAll(string(b), `"devices"`) {
		t.Errorf("an observer lists the devices: %s", b)
	}
	if res, b := callTool(t, device, "list_devices", map[string]any{}); !res.IsError || !containsAll(string(b), `"type":"forbidden"`) {
		t.Errorf("a device lists the devices: %s, want forbidden", b)
	}
}

// basicAuth logs every request in as user with password.
type basicAuth struct{ user, password string }

func (b basicAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth(b.user, b.password)
	return http.DefaultTransport.RoundTrip(r)
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// writeCredentials writes a credentials file of users with the given
// roles, each with the password <username>-pw.
func writeCredentials(t *testing.T, users map[string]config.Role) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("insecure_plaintext: true\nusers:\n")
	for u, r := range users {
		fmt.Fprintf(&b, "  - {username: %s, password: %s-pw, role: %s}\n", u, u, r)
	}
	path := filepath.Join(t.TempDir(), "creds.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return string(xb) == string(yb)
}
