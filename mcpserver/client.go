package mcpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"github.com/mqttinfer/mqttinfer/api"
)

// Client calls a running service's HTTP gateway for the tools: every tool is
// a gateway route, so a tool call is authenticated, authorized and
// throttled exactly as the same call over HTTP would be.
type Client struct {
	// URL is the gateway's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// HTTP makes the calls; nil means http.DefaultClient.
	HTTP *http.Client
	// Header, when set, adds headers to every call (Authorization).
	Header http.Header
}

// Local returns a client that serves every call with h, the gateway's
// handler, in this process; the headers of each tool call's own HTTP
// request (its login, its address) go with it, so that the caller of the
// MCP endpoint is the client the gateway sees.
func Local(h http.Handler) *Client {
	return &Client{URL: "http://mcp.invalid", HTTP: &http.Client{Transport: local{h}}}
}

// remoteHeader carries the MCP request's peer address from Handler to the
// in-process transport; Handler sets it on every request, so a caller
// cannot choose it.
const remoteHeader = "Mqttinfer-Mcp-Remote-Addr"

// local is an http.RoundTripper that serves requests with a handler.
type local struct{ h http.Handler }

func (l local) RoundTrip(r *http.Request) (*http.Response, error) {
	r.RemoteAddr = r.Header.Get(remoteHeader)
	r.Header.Del(remoteHeader)
	rec := httptest.NewRecorder()
	l.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

// do makes one call and returns the answer's status and body; the error
// is an *api.Error for a service that cannot be reached.
func (c *Client) do(ctx context.Context, extra http.Header, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, api.Errorf(api.InvalidRequest, "encode the request: %v", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.URL, "/")+path, rd)
	if err != nil {
		return 0, nil, api.Errorf(api.InvalidRequest, "%v", err)
	}
	for k, vs := range c.Header {
		req.Header[k] = vs
	}
	for k, vs := range extra {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, api.Errorf(api.ModelUnavailable, "the service at %s cannot be reached: %v", c.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return resp.StatusCode, nil, api.Errorf(api.ModelUnavailable, "read the service's answer: %v", err)
	}
	return resp.StatusCode, b, nil
}

// get decodes the 2xx JSON answer of a GET into out; another answer is
// the gateway's error (the api.Result's) as an *api.Error.
func (c *Client) get(ctx context.Context, extra http.Header, path string, out any) error {
	status, b, err := c.do(ctx, extra, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	if status/100 != 2 {
		return resultOf(status, b).Error
	}
	if err := json.Unmarshal(b, out); err != nil {
		return api.Errorf(api.InferenceFailed, "the service's answer to GET %s is not JSON: %v", path, err)
	}
	return nil
}

// infer runs one request and returns its api.Result, errors included.
func (c *Client) infer(ctx context.Context, extra http.Header, version, model string, body any) (api.Result, error) {
	status, b, err := c.do(ctx, extra, http.MethodPost, "/"+version+"/models/"+url.PathEscape(model)+"/infer", body)
	if err != nil {
		return api.Result{}, err
	}
	return resultOf(status, b), nil
}

// resultOf reads an answer of the gateway as the api.Result it is; an
// answer that is none (a proxy's error page) becomes one with its status.
func resultOf(status int, b []byte) api.Result {
	var res api.Result
	if json.Unmarshal(b, &res) == nil && res.Status != 0 {
		return res
	}
	t := api.InferenceFailed
	if status == http.StatusServiceUnavailable || status == http.StatusBadGateway || status == http.StatusGatewayTimeout {
		t = api.ModelUnavailable
	}
	return api.Result{Status: status, Error: api.Errorf(t, "HTTP %d: %s", status, strings.TrimSpace(string(b)))}
}
