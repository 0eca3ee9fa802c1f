package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/topics"

	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
)

// BenchmarkRoundTrip drives the embedded service with the device simulator
// at QoS 1 (each device its own connection) and reports round trips/s and
// latency percentiles. b.N is ignored beyond one run per sub-benchmark: the
// unit of work is a fixed-length load run.
func BenchmarkRoundTrip(b *testing.B) {
	for _, devices := range []int{10, 100} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			cfg := testConfig(b)
			cfg.Throttle.Rate = 1e6
			cfg.Throttle.Burst = 1e6
			cfg.Throttle.MaxInFlight = 1e6
			cfg.HTTP.Addr = ""
			svc := startService(b, cfg)
			b.ResetTimer()
			rep, err := devicesim.Run(context.Background(), devicesim.Options{
				Broker:   "tcp://" + svc.MQTTAddr(),
				Devices:  devices,
				Rate:     20000 / float64(devices),
				QoS:      1,
				Duration: 3 * time.Second,
				Seed:     1,
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rep.RoundTripsPerSec, "roundtrips/s")
			b.ReportMetric(float64(rep.Latency.P50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(rep.Latency.P99.Microseconds()), "p99-µs")
			b.ReportMetric(float64(rep.Lost), "lost")
		})
	}
}

// BenchmarkFrontDoors compares one request's round trip through the two
// front doors of the same service and model: MQTT (QoS 1, request topic to
// result topic; a paho device, and a lean one as in BenchmarkTimeToFirstToken)
// and HTTP (POST /v1/models/anomaly/infer). Sequential, one client each; the
// ratio of the two is the gateway's overhead.
func BenchmarkFrontDoors(b *testing.B) {
	cfg := testConfig(b)
	cfg.Throttle.Enabled = false
	svc := startService(b, cfg)
	body := []byte(`{"input":{"sensor":"temp","value":21.5}}`)

	b.Run("mqtt", func(b *testing.B) {
		d := newDevice(b, svc.MQTTAddr(), cfg.Prefix, "bench-mqtt")
		topic := topics.Request(cfg.Prefix, "v1", "bench-mqtt", "anomaly")
		for b.Loop() {
			d.publish(topic, body)
			<-d.msgs
		}
	})
	b.Run("mqtt-lean", func(b *testing.B) {
		d := newLeanDevice(b, svc.MQTTAddr(), cfg.Prefix, "bench-mqtt-lean")
		topic := topics.Request(cfg.Prefix, "v1", "bench-mqtt-lean", "anomaly")
		for b.Loop() {
			d.publish(topic, body)
			d.next()
		}
	})
	b.Run("http", func(b *testing.B) {
		url := "http://" + svc.HTTPAddr() + "/v1/models/anomaly/infer"
		for b.Loop() {
			resp, err := httpClient.Post(url, "application/json", bytes.NewReader(body))
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

// BenchmarkTimeToFirstToken measures the time from asking to the first
// token of a chat answer: straight from a local OpenAI-compatible server
// (the baseline), relayed over MQTT as a delta event (a paho device, and a
// lean one that reads and writes on the benchmark's goroutine), and relayed
// over HTTP as a Server-Sent Event. The server holds the rest of the answer
// until the first token has arrived, as a real model takes milliseconds per
// token: otherwise the first token's time would also carry the rest of the
// answer, relayed at once on the same two cores.
func BenchmarkTimeToFirstToken(b *testing.B) {
	backend := &chatBackend{answer: "first second third", next: make(chan struct{})}
	srv := httptest.NewServer(backend)
	b.Cleanup(srv.Close)
	cfg := testConfig(b)
	cfg.Throttle.Enabled = false
	cfg.Models.Chat.BaseURL, cfg.Models.Chat.Model = srv.URL+"/v1", "tiny"
	svc := startService(b, cfg)
	ask := []byte(`{"stream":true,"input":{"prompt":"hi"}}`)
	done := []byte(`"event":"done"`)
	firstData := func(r io.Reader) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				return
			}
		}
	}
	// rest lets the server finish the answer and waits for it, off the clock.
	rest := func(b *testing.B, wait func()) {
		b.StopTimer()
		backend.next <- struct{}{}
		wait()
		b.StartTimer()
	}

	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			resp, err := httpClient.Post(srv.URL+"/v1/chat/completions", "application/json",
				strings.NewReader(`{"model":"tiny","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				b.Fatal(err)
			}
			firstData(resp.Body)
			rest(b, func() {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
	})
	b.Run("mqtt", func(b *testing.B) {
		d := newDevice(b, svc.MQTTAddr(), cfg.Prefix, "bench-chat")
		topic := topics.Request(cfg.Prefix, "v1", "bench-chat", "chat")
		for b.Loop() {
			d.publish(topic, ask)
			<-d.msgs // the first delta
			rest(b, func() {
				for m := <-d.msgs; !bytes.Contains(m.Payload(), done); m = <-d.msgs {
				}
			})
		}
	})
	b.Run("mqtt-lean", func(b *testing.B) {
		d := newLeanDevice(b, svc.MQTTAddr(), cfg.Prefix, "bench-chat-lean")
		topic := topics.Request(cfg.Prefix, "v1", "bench-chat-lean", "chat")
		for b.Loop() {
			d.publish(topic, ask)
			d.next() // the first delta
			rest(b, func() {
				for !bytes.Contains(d.next(), done) {
				}
			})
		}
	})
	b.Run("sse", func(b *testing.B) {
		url := "http://" + svc.HTTPAddr() + "/v1/models/chat/infer"
		for b.Loop() {
			req, _ := http.NewRequest("POST", url, bytes.NewReader(ask))
			req.Header.Set("Accept", "text/event-stream")
			resp, err := httpClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			firstData(resp.Body)
			rest(b, func() {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
	})
}

// BenchmarkModelLatency measures each built-in model's warm latency for one
// request, straight through the model (no transport), with realistic
// inputs: p50 and p99 over b.N requests.
func BenchmarkModelLatency(b *testing.B) {
	cfg := testConfig(b)
	withModels(&cfg)
	svc := startService(b, cfg)
	inputs := map[string]func(b *testing.B) []byte{
		"anomaly": func(*testing.B) []byte { return []byte(`{"sensor":"temp","value":21.5}`) },
		"vad": func(b *testing.B) []byte {
			pcm := make([]byte, 16000*2) // 1 s of a 200 Hz tone
			for i := 0; i < len(pcm); i += 2 {
				v := int16(8000 * math.Sin(2*math.Pi*200*float64(i/2)/16000))
				pcm[i], pcm[i+1] = byte(v), byte(v>>8)
			}
			return mustJSON(b, map[string]any{"pcm16": base64.StdEncoding.EncodeToString(pcm)})
		},
		"ocr": func(b *testing.B) []byte {
			return mustJSON(b, map[string]any{"image": base64.StdEncoding.EncodeToString(
				renderText(b, "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "004521.7 kWh", 480, 120))})
		},
		"detect": func(b *testing.B) []byte {
			jpg, err := os.ReadFile("/usr/share/darknet/data/dog.jpg")
			if err != nil {
				b.Skip(err)
			}
			return mustJSON(b, map[string]any{"image": base64.StdEncoding.EncodeToString(jpg)})
		},
	}
	for _, name := range []string{"anomaly", "vad", "ocr", "detect"} {
		b.Run(name, func(b *testing.B) {
			m, ok := svc.Models().Get(name)
			if !ok || m.Info().Unavailable != "" {
				b.Skipf("%s unavailable", name)
			}
			in := inputs[name](b)
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if _, err := m.Infer(context.Background(), inference.Request{Device: "bench", Input: in}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}
