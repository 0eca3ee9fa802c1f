// Package mcpserver owns mqttinfer's Model Context Protocol server (the
// official Go SDK): tools that let an LLM host list the models, run them,
// and ask about the fleet, and the model catalog as a resource.
//
// Every tool is a call to the service's HTTP gateway (Client): the same
// routes, logins, roles, throttle and answers as HTTP. `mqttinfer mcp`
// serves it on stdio for a host that starts it, calling a running service
// over the network; the service serves it at /mcp on its HTTP port, calling
// its own gateway in process (Local) as the user who called /mcp.
//
// Tools answer with structured content. A failed call is a tool error
// (isError) whose structured content is the api.Result of the wire
// contract: its status and error type (invalid_input, rate_limited,
// forbidden...) are those a device would get.
package mcpserver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// CatalogURI is the URI of the model catalog resource.
const CatalogURI = "mqttinfer://catalog"

// Version is the server's version, reported to clients.
var Version = "dev"

// New returns the MCP server whose tools call c.
func New(c *Client) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "mqttinfer", Title: "mqttinfer fleet and models", Version: Version}, &mcp.ServerOptions{
		Instructions: "mqttinfer runs AI models (anomaly, vad, ocr, detect, chat...) for IoT devices over MQTT. " +
			"Call list_models for the models and their input schemas, infer to run one (images and audio as base64 in the input), " +
			"list_devices, device_results and recent_anomalies to see what the fleet is doing.",
	})
	t := tools{c}
	mcp.AddTool(s, &mcp.Tool{Name: "list_models", Description: "The models the service serves, each with its input and output JSON Schema, cost in throttle tokens, and whether it streams."}, t.listModels)
	mcp.AddTool(s, &mcp.Tool{Name: "infer", Description: "Run one inference request on a model, as the HTTP API's POST /{ver}/models/{model}/infer: the input must follow the model's input schema (list_models). Images (JPEG/PNG) and audio (16 kHz pcm16) go base64 in the input; the server fetches no URLs. Throttled like any client: a 429 rate_limited error says when to retry."}, t.infer)
	mcp.AddTool(s, &mcp.Tool{Name: "list_devices", Description: "The devices connected to the service (and those that left within the last minute): each one's last request and result, request, error and 429 counts, and throttle state (tokens, in flight); with each model's request rate and p50/p99 latency, and the workers."}, t.listDevices)
	mcp.AddTool(s, &mcp.Tool{Name: "device_results", Description: "The recent results (newest first) the service sent one device."}, t.deviceResults)
	mcp.AddTool(s, &mcp.Tool{Name: "recent_anomalies", Description: "The telemetry points the anomaly model flagged recently (newest first), with the device and sensor."}, t.recentAnomalies)
	s.AddResource(&mcp.Resource{URI: CatalogURI, Name: "catalog", Title: "Model catalog",
		Description: "The model catalog, as retained on the models topic: name, version, input and output schema, cost, streaming.",
		MIMEType:    "application/json"}, t.catalog)
	return s
}

// Handler returns the streamable HTTP handler of s for the gateway's /mcp,
// where s's client is Local: it records each request's peer address for
// the in-process calls.
func Handler(s *mcp.Server, log *slog.Logger) http.Handler {
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, &mcp.StreamableHTTPOptions{Logger: log})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set(remoteHeader, r.RemoteAddr)
		h.ServeHTTP(w, r)
	})
}

type tools struct{ c *Client }

// forwarded is what of a tool call's own HTTP request goes with its
// gateway calls: its login and its address (over stdio: nothing).
func forwarded(req *mcp.CallToolRequest) http.Header {
	if req == nil || req.Extra == nil || req.Extra.Header == nil {
		return nil
	}
	h := http.Header{}
	for _, k := range []string{"Authorization", "X-Forwarded-For", remoteHeader} {
		if v := req.Extra.Header.Values(k); len(v) > 0 {
			h[k] = v
		}
	}
	return h
}

type none struct{}

func (t tools) listModels(ctx context.Context, req *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, any, error) {
	var c json.RawMessage
	err := t.c.get(ctx, forwarded(req), "/"+topics.Latest()+"/models", &c)
	return answer(c, err)
}

// InferInput is the infer tool's input.
type InferInput struct {
	Model string `json:"model" jsonschema:"the model's name, as list_models gives it"`
	Input any    `json:"input" jsonschema:"the model's input, following its input_schema from list_models; images and audio base64"`
	// Params are the model's options.
	Params map[string]any `json:"params,omitempty" jsonschema:"model-specific options (see the model's description)"`
	// ModelVersion pins a version of a model served in several.
	ModelVersion string `json:"model_version,omitempty" jsonschema:"a version to pin, for a model served in several; empty: the model's policy chooses"`
	// APIVersion is the API version of the request (default: the latest).
	APIVersion string `json:"api_version,omitempty" jsonschema:"API version of the request: v1 or v2 (default the latest)"`
}

func (t tools) infer(ctx context.Context, req *mcp.CallToolRequest, in InferInput) (*mcp.CallToolResult, any, error) {
	ver := in.APIVersion
	if ver == "" {
		ver = topics.Latest()
	}
	body := map[string]any{"input": in.Input}
	if in.Params != nil {
		body["params"] = in.Params
	}
	if in.ModelVersion != "" {
		body["model_version"] = in.ModelVersion
	}
	res, err := t.c.infer(ctx, forwarded(req), ver, in.Model, body)
	if err != nil {
		return answer(nil, err)
	}
	if res.Status != http.StatusOK {
		return failure(res)
	}
	return answer(res, nil)
}

func (t tools) listDevices(ctx context.Context, req *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, any, error) {
	var s json.RawMessage
	err := t.c.get(ctx, forwarded(req), "/fleet", &s)
	return answer(s, err)
}

// DeviceResultsInput is the device_results tool's input.
type DeviceResultsInput struct {
	Device string `json:"device" jsonschema:"the device id"`
	Limit  int    `json:"limit,omitempty" jsonschema:"at most this many results (default: all kept, 16)"`
}

func (t tools) deviceResults(ctx context.Context, req *mcp.CallToolRequest, in DeviceResultsInput) (*mcp.CallToolResult, any, error) {
	if err := topics.ValidID(in.Device); err != nil {
		return answer(nil, api.Errorf(api.InvalidInput, "device: %v", err))
	}
	var r json.RawMessage
	err := t.c.get(ctx, forwarded(req), "/fleet/devices/"+url.PathEscape(in.Device)+"/results?n="+strconv.Itoa(in.Limit), &r)
	return answer(r, err)
}

// AnomaliesInput is the recent_anomalies tool's input.
type AnomaliesInput struct {
	Limit int `json:"limit,omitempty" jsonschema:"at most this many anomalies (default: all kept, 64)"`
}

func (t tools) recentAnomalies(ctx context.Context, req *mcp.CallToolRequest, in AnomaliesInput) (*mcp.CallToolResult, any, error) {
	var r json.RawMessage
	err := t.c.get(ctx, forwarded(req), "/fleet/anomalies?n="+strconv.Itoa(in.Limit), &r)
	return answer(r, err)
}

func (t tools) catalog(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	var extra http.Header
	if req != nil && req.Extra != nil && req.Extra.Header != nil {
		extra = forwarded(&mcp.CallToolRequest{Extra: req.Extra})
	}
	var c json.RawMessage
	if err := t.c.get(ctx, extra, "/"+topics.Latest()+"/models", &c); err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: CatalogURI, MIMEType: "application/json", Text: string(c)}}}, nil
}

// answer is a tool's result: v as structured content (and as text, for
// hosts that read only text), or the tool error of err.
func answer(v any, err error) (*mcp.CallToolResult, any, error) {
	if err != nil {
		e, ok := err.(*api.Error)
		if !ok {
			e = api.Errorf(api.InferenceFailed, "%v", err)
		}
		return failure(api.ErrorResult("", "", e))
	}
	return result(v, false)
}

// failure is the tool error of an error reply: its api.Result as
// structured content, with the status and the wire contract's error type.
func failure(res api.Result) (*mcp.CallToolResult, any, error) {
	if res.Status == 0 && res.Error != nil {
		res.Status = res.Error.Status()
	}
	return result(res, true)
}

func result(v any, isError bool) (*mcp.CallToolResult, any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, nil, err
	}
	return &mcp.CallToolResult{
		IsError:           isError,
		Content:           []mcp.Content{&mcp.TextContent{Text: string(b)}},
		StructuredContent: json.RawMessage(b),
	}, nil, nil
}
