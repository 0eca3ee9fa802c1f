package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/worker"
)

// BenchmarkGatewayInfer is one POST /v1/models/sum/infer through the
// gateway on a real loopback socket (keep-alive), to a model that adds two
// numbers: the cost of the HTTP front door on top of the pool. Compare with
// BenchmarkPoolSubmit, the same request without HTTP.
func BenchmarkGatewayInfer(b *testing.B) {
	for _, bc := range []struct {
		name     string
		throttle *throttle.Config
	}{
		{"plain", nil},
		{"throttled", &throttle.Config{Default: throttle.Limits{Rate: 1e9, Burst: 1 << 30, MaxInFlight: 64}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, envConfig{workers: 2, queue: 64, throttle: bc.throttle})
			body := []byte(`{"id":"bench","input":{"numbers":[1,2]}}`)
			client := e.srv.Client()
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/models/sum/infer", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkPoolSubmit is BenchmarkGatewayInfer's request submitted to the
// pool directly (decode, submit, wait for the result, encode): the baseline
// the gateway's overhead is measured against.
func BenchmarkPoolSubmit(b *testing.B) {
	e := newEnv(b, envConfig{workers: 2, queue: 64})
	body := []byte(`{"id":"bench","input":{"numbers":[1,2]}}`)
	results := make(chan api.Result, 1)
	b.ReportAllocs()
	for b.Loop() {
		req, ae := api.Decode("v1", body, "application/json")
		if ae != nil {
			b.Fatal(ae)
		}
		err := e.pool.Submit(worker.Task{
			Job:    worker.Job{Version: "v1", Device: "ip-127-0-0-1", Model: "sum", Request: req, Received: time.Now()},
			Result: func(r api.Result) { results <- r },
		})
		if err != nil {
			b.Fatal(err)
		}
		res := <-results
		if _, err := json.Marshal(res); err != nil || res.Status != 200 {
			b.Fatalf("%+v %v", res, err)
		}
	}
}
