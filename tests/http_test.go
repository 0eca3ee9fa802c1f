package tests

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/api"
)

// TestHTTPGateway: the REST front door of the running service goes through
// the same worker core as MQTT: the same results, errors and models.
func TestHTTPGateway(t *testing.T) {
	_, _, httpAddr := startChatService(t, &chatBackend{answer: "streamed over SSE", seen: make(chan map[string]any, 4)})
	base := "http://" + httpAddr

	resp, err := httpClient.Post(base+"/v1/models/anomaly/infer", "application/json",
		strings.NewReader(`{"id":"h1","input":{"sensor":"temp","value":21.5}}`))
	if err != nil {
		t.Fatal(err)
	}
	var r api.Result
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 || r.ID != "h1" || r.Status != 200 {
		t.Fatalf("POST infer: %d %+v %v", resp.StatusCode, r, err)
	}
	resp.Body.Close()
	if resp.Header.Get("RateLimit") == "" || resp.Header.Get("RateLimit-Policy") == "" {
		t.Errorf("no RateLimit headers: %v", resp.Header)
	}

	// Errors carry the same body as over MQTT, with the HTTP status.
	resp, err = httpClient.Post(base+"/v1/models/anomaly/infer", "application/json", strings.NewReader(`{"id":"h2","input":`))
	if err != nil {
		t.Fatal(err)
	}
	r = api.Result{}
	_ = json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if resp.StatusCode != 400 || r.Error == nil || r.Error.Type != api.InvalidRequest || r.ID != "h2" {
		t.Errorf("bad JSON: %d %+v", resp.StatusCode, r)
	}

	// The catalog lists every model, with the unavailable ones saying why.
	if body := httpGet(t, base+"/v1/models", 200); !strings.Contains(body, `"name":"anomaly"`) || !strings.Contains(body, `"name":"chat"`) {
		t.Errorf("catalog %s", body)
	}

	// SSE: the chat model's stream as Server-Sent Events.
	req, _ := http.NewRequest("POST", base+"/v1/models/chat/infer", strings.NewReader(`{"id":"h3","input":{"prompt":"hi"}}`))
	req.Header.Set("Accept", "text/event-stream")
	resp, err = httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("content type %q", ct)
	}
	var kinds []string
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var ev api.StreamEvent
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatalf("SSE data %q: %v", data, err)
			}
			kinds = append(kinds, ev.Event)
			var d struct {
				Text string `json:"text"`
			}
			if ev.Event == api.EventDelta && json.Unmarshal(ev.Delta, &d) == nil {
				text.WriteString(d.Text)
			}
		}
	}
	if got := strings.Join(kinds, ","); got != "delta,delta,delta,done" || text.String() != "streamed over SSE" {
		t.Errorf("SSE events %s, text %q", got, text.String())
	}
}
