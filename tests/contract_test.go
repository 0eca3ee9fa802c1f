package tests

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cborlib "github.com/fxamacker/cbor/v2"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/service"
	"github.com/mqttinfer/mqttinfer/topics"
)

// The contract suite: one set of wire-level cases run against every
// deployment shape, so that a device gets the same answers whichever runs
// behind its broker.

// deployment is a running shape: where devices connect and what it checks.
type deployment struct {
	// addr is the broker's host:port for devices.
	addr string
	// checksSender: the broker is mqttinfer's and refuses requests
	// published under another device's id (403). Any other broker relies on
	// its own ACLs for that.
	checksSender bool
}

// shape starts a deployment from cfg (listeners on random ports; cfg's
// throttle applies wherever that shape throttles).
type shape struct {
	name  string
	start func(t *testing.T, cfg config.Config) deployment
}

// workersPerShape is how many remote workers the scale-out shapes run.
const workersPerShape = 3

var shapes = []shape{
	{"embedded", func(t *testing.T, cfg config.Config) deployment {
		return deployment{addr: startService(t, cfg).MQTTAddr(), checksSender: true}
	}},
	{"broker+workers", func(t *testing.T, cfg config.Config) deployment {
		bcfg := cfg
		bcfg.Worker.InProcess = false
		svc := startService(t, bcfg)
		wcfg := cfg
		wcfg.Remote.Broker = "tcp://" + svc.MQTTAddr()
		wcfg.Remote.Throttle = false // the broker throttles
		startWorkers(t, wcfg, workersPerShape)
		waitFor(t, func() bool { return httpStatus(t, "http://"+svc.HTTPAddr()+"/readyz") == 200 })
		return deployment{addr: svc.MQTTAddr(), checksSender: true}
	}},
	{"mosquitto+workers", func(t *testing.T, cfg config.Config) deployment {
		m := testenv.StartMosquitto(t, testenv.MosquittoOptions{})
		wcfg := cfg
		wcfg.Remote.Broker = m.URL()
		wcfg.Remote.Throttle = cfg.Throttle.Enabled // a foreign broker throttles nothing
		startWorkers(t, wcfg, workersPerShape)
		return deployment{addr: m.Addr}
	}},
	{"cluster", func(t *testing.T, cfg config.Config) deployment {
		edges := startCluster(t, cfg, 2, workersPerShape)
		return deployment{addr: edges[0].MQTTAddr(), checksSender: true}
	}},
}

// startCluster starts a cluster in this process: three NATS servers with
// JetStream, edges (the `serve --cluster` assembly) and workers (`worker
// --cluster`), and waits until the edges are ready.
func startCluster(t *testing.T, cfg config.Config, edges, workers int) []*service.Service {
	t.Helper()
	nats := testenv.StartNATS(t, 3)
	cfg.Cluster.URL = nats.URL()
	var svcs []*service.Service
	for i := range edges {
		ecfg := cfg
		ecfg.Node = fmt.Sprintf("edge%d", i+1)
		svcs = append(svcs, startService(t, ecfg))
	}
	startWorkers(t, cfg, workers)
	for _, svc := range svcs {
		waitFor(t, func() bool { return httpStatus(t, "http://"+svc.HTTPAddr()+"/readyz") == 200 })
	}
	return svcs
}

// startWorkers runs n remote workers (the `mqttinfer worker` assembly) in
// this process and waits until their group has settled.
func startWorkers(t *testing.T, cfg config.Config, n int) []*service.Worker {
	t.Helper()
	cfg.HTTP.Addr = ""
	var ws []*service.Worker
	for i := range n {
		c := cfg
		c.Node = fmt.Sprintf("w%d", i+1)
		c.Remote.ClientID = ""
		c.Remote.HTTPAddr = "127.0.0.1:0"
		if err := c.Validate(service.KnownModels()); err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError})).With("worker", c.Node)
		w, err := service.NewWorker(c, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("worker %s: %v", c.Node, err)
				}
			case <-time.After(2 * wait):
				t.Errorf("worker %s did not stop", c.Node)
			}
		})
		ws = append(ws, w)
	}
	waitFor(t, func() bool {
		for _, w := range ws {
			if httpStatus(t, "http://"+w.HTTPAddr()+"/readyz") != 200 {
				return false
			}
		}
		return true
	})
	return ws
}

func httpStatus(t *testing.T, url string) int {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// cdev is a device of the contract suite, MQTT 5 or 3.1.1.
type cdev struct {
	*mqttclient.Conn
	id   string
	msgs chan mqttclient.Message
}

func dialDevice(t *testing.T, addr, id string, v mqttclient.Version, filters ...string) *cdev {
	t.Helper()
	d := &cdev{id: id, msgs: make(chan mqttclient.Message, 4096)}
	c, err := mqttclient.Dial(context.Background(), mqttclient.Options{URL: "tcp://" + addr, ClientID: id, Version: v,
		OnMessage: func(m mqttclient.Message) { d.msgs <- m }})
	if err != nil {
		t.Fatal(err)
	}
	d.Conn = c
	t.Cleanup(func() { c.Close() })
	subs := []mqttclient.Subscription{{Filter: topics.ResultFilter("mqttinfer", "", id, ""), QoS: 1}}
	for _, f := range filters {
		subs = append(subs, mqttclient.Subscription{Filter: f, QoS: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Subscribe(ctx, subs...); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *cdev) pub(t *testing.T, topic string, body any, props ...mqttclient.Properties) {
	t.Helper()
	m := mqttclient.Message{Topic: topic, Payload: mustJSON(t, body), QoS: 1}
	if len(props) > 0 {
		m.Properties = props[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := d.Publish(ctx, m); err != nil && !strings.Contains(err.Error(), "0x97") {
		t.Fatal(err)
	}
}

func (d *cdev) ask(t *testing.T, model string, body any) {
	t.Helper()
	d.pub(t, topics.Request("mqttinfer", "v1", d.id, model), body)
}

func (d *cdev) next(t *testing.T) mqttclient.Message {
	t.Helper()
	select {
	case m := <-d.msgs:
		return m
	case <-time.After(wait):
		t.Fatalf("device %s: no message within %s", d.id, wait)
		return mqttclient.Message{}
	}
}

func (d *cdev) result(t *testing.T) api.Result {
	t.Helper()
	m := d.next(t)
	var r api.Result
	if err := json.Unmarshal(m.Payload, &r); err != nil {
		t.Fatalf("%s: %s: %v", m.Topic, m.Payload, err)
	}
	return r
}

// TestContract runs the contract suite against every deployment shape.
func TestContract(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) { contract(t, sh) })
	}
}

func contract(t *testing.T, sh shape) {
	backend := &chatBackend{answer: "the sky scatters blue light", hold: false}
	srv := httptest.NewServer(backend)
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	cfg.Models.Chat.BaseURL = srv.URL + "/v1"
	cfg.Models.Chat.Model = "tiny"
	dep := sh.start(t, cfg)

	t.Run("series", func(t *testing.T) {
		// A device's series is one series, whichever worker serves it:
		// 30 steady readings, then a spike, which is flagged.
		d := dialDevice(t, dep.addr, "series-1", mqttclient.V311)
		for i := range 30 {
			d.ask(t, "anomaly", sample(fmt.Sprint(i), 20+0.1*float64(i%3)))
		}
		d.ask(t, "anomaly", sample("spike", 80))
		for i := range 31 {
			r := d.result(t)
			var out struct {
				N         int  `json:"n"`
				IsAnomaly bool `json:"is_anomaly"`
			}
			if err := json.Unmarshal(r.Output, &out); err != nil || r.Status != 200 || out.N != i+1 {
				t.Fatalf("reply %d: %+v (%s)", i, r, r.Output)
			}
			if i == 30 && !out.IsAnomaly {
				t.Errorf("spike not flagged: %s", r.Output)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		d := dialDevice(t, dep.addr, "errs-1", mqttclient.V311)
		for _, c := range []struct {
			topic string
			body  any
			want  api.ErrorType
		}{
			{topics.Request("mqttinfer", "v1", d.id, "anomaly"), `{"id":"x1",`, api.InvalidRequest},
			{topics.Request("mqttinfer", "v1", d.id, "anomaly"), map[string]any{"id": "x2", "input": map[string]any{"value": "hot"}}, api.InvalidInput},
			{topics.Request("mqttinfer", "v1", d.id, "no-such-model"), sample("x3", 1), api.ModelNotFound},
			{topics.Request("mqttinfer", "v9", d.id, "anomaly"), sample("x4", 1), api.UnsupportedVersion},
			{topics.Request("mqttinfer", "v1", d.id, "anomaly"), map[string]any{"id": "x5", "input": strings.Repeat("x", cfg.MQTT.MaxRequestSize)}, api.PayloadTooLarge},
		} {
			d.pub(t, c.topic, c.body)
			if r := d.result(t); r.Error == nil || r.Error.Type != c.want || r.Status != c.want.Status() {
				t.Errorf("%.40s: %+v, want %s", mustJSON(t, c.body), r, c.want)
			}
		}
		if dep.checksSender {
			d.pub(t, topics.Request("mqttinfer", "v1", "someone-else", "anomaly"), sample("spoof", 1))
			if r := d.result(t); r.Status != 403 {
				t.Errorf("spoofed id: %+v", r)
			}
		}
	})

	t.Run("bad input matrix", func(t *testing.T) {
		// Every bad input gets a defined error on the sender's topic, and
		// the device is served normally afterwards: no crash, no stall.
		d := dialDevice(t, dep.addr, "matrix-1", mqttclient.V5)
		req := func(ver, model string) string { return topics.Request("mqttinfer", ver, d.id, model) }
		deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
		cborOf := func(v any) []byte {
			b, err := api.MarshalCBOR(v)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		cbor := mqttclient.Properties{ContentType: api.ContentTypeCBOR}
		for _, c := range []struct {
			name    string
			topic   string
			payload []byte
			props   mqttclient.Properties
			want    api.ErrorType
		}{
			{"truncated json", req("v1", "anomaly"), []byte(`{"id":"m1","input":{"sensor":`), mqttclient.Properties{}, api.InvalidRequest},
			{"array body", req("v1", "anomaly"), []byte(`[{"input":1}]`), mqttclient.Properties{}, api.InvalidRequest},
			{"deep nesting", req("v1", "anomaly"), []byte(`{"id":"m2","input":` + deep + `}`), mqttclient.Properties{}, api.InvalidRequest},
			{"not utf-8", req("v1", "anomaly"), []byte("{\"id\":\"m3\",\"input\":{\"sensor\":\"\xff\xfe\",\"value\":1}}"), mqttclient.Properties{}, api.InvalidRequest},
			{"number too big", req("v1", "anomaly"), []byte(`{"id":"m4","input":{"sensor":"t","value":1e400}}`), mqttclient.Properties{}, api.InvalidInput},
			{"NaN literal", req("v1", "anomaly"), []byte(`{"id":"m5","input":{"sensor":"t","value":NaN}}`), mqttclient.Properties{}, api.InvalidRequest},
			{"null input", req("v1", "anomaly"), []byte(`{"id":"m6","input":null}`), mqttclient.Properties{}, api.InvalidRequest},
			{"numeric id", req("v1", "anomaly"), []byte(`{"id":7,"input":{}}`), mqttclient.Properties{}, api.InvalidRequest},
			{"negative deadline", req("v1", "anomaly"), []byte(`{"id":"m7","input":{},"deadline_ms":-1}`), mqttclient.Properties{}, api.InvalidRequest},
			{"params not an object", req("v1", "anomaly"), []byte(`{"id":"m8","input":{},"params":[1]}`), mqttclient.Properties{}, api.InvalidRequest},
			{"batch on v1", req("v1", "anomaly"), []byte(`{"id":"m9","inputs":[{}]}`), mqttclient.Properties{}, api.InvalidRequest},
			{"empty batch", req("v2", "anomaly"), []byte(`{"id":"m10","inputs":[]}`), mqttclient.Properties{}, api.InvalidRequest},
			{"batch too big", req("v2", "anomaly"), []byte(`{"id":"m11","inputs":[` + strings.TrimSuffix(strings.Repeat(`{"sensor":"t","value":1},`, 300), ",") + `]}`), mqttclient.Properties{}, api.InvalidRequest},
			{"streamed batch", req("v2", "anomaly"), []byte(`{"id":"m12","stream":true,"inputs":[{"sensor":"t","value":1}]}`), mqttclient.Properties{}, api.InvalidRequest},
			{"cancel without id", req("v1", "anomaly"), []byte(`{"cancel":true}`), mqttclient.Properties{}, api.InvalidRequest},
			{"wrong input type", req("v1", "anomaly"), []byte(`{"id":"m13","input":{"sensor":5,"value":1}}`), mqttclient.Properties{}, api.InvalidInput},
			{"too many values", req("v1", "anomaly"), []byte(`{"id":"m14","input":{"sensor":"t","values":[` + strings.TrimSuffix(strings.Repeat("1,", 10001), ",") + `]}}`), mqttclient.Properties{}, api.InvalidInput},
			{"vad odd pcm16", req("v1", "vad"), []byte(`{"id":"m15","input":{"pcm16":"AQID"}}`), mqttclient.Properties{}, ""},
			{"ocr not an image", req("v1", "ocr"), []byte(`{"id":"m16","input":{"image":"R0lGODlhAQ=="}}`), mqttclient.Properties{}, ""},
			{"cbor garbage", req("v2", "anomaly"), []byte{0xff, 0x00, 0x13}, cbor, api.InvalidRequest},
			{"cbor array", req("v2", "anomaly"), cborOf([]any{1, 2}), cbor, api.InvalidRequest},
			{"cbor on v1", req("v1", "anomaly"), cborOf(map[string]any{"id": "m17", "input": map[string]any{}}), cbor, api.InvalidRequest},
			{"cbor byte-string id, read as base64", req("v2", "anomaly"), cborOf(map[string]any{"id": []byte("m18"), "input": map[string]any{}}), cbor, api.InvalidInput},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			err := d.Publish(ctx, mqttclient.Message{Topic: c.topic, Payload: c.payload, QoS: 1, Properties: c.props})
			cancel()
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			m := d.next(t)
			h, ok := api.PeekReply(m.Payload, m.Properties.ContentType)
			var res struct {
				Error *api.Error `json:"error" cbor:"error"`
			}
			if m.Properties.ContentType == api.ContentTypeCBOR {
				_ = cborlib.Unmarshal(m.Payload, &res)
			} else {
				_ = json.Unmarshal(m.Payload, &res)
			}
			switch {
			case !ok || h.Status < 400 || res.Error == nil:
				t.Errorf("%s: %s", c.name, m.Payload)
			case c.want == "" && res.Error.Type != api.InvalidInput && res.Error.Type != api.ModelUnavailable:
				t.Errorf("%s: %s, want invalid_input (or model_unavailable without the ONNX models)", c.name, res.Error.Type)
			case c.want != "" && res.Error.Type != c.want:
				t.Errorf("%s: %s (%s), want %s", c.name, res.Error.Type, res.Error.Message, c.want)
			}
		}
		d.pub(t, req("v1", "anomaly"), sample("after", 20))
		if r := d.result(t); r.Status != 200 || r.ID != "after" {
			t.Fatalf("after the matrix: %+v", r)
		}
	})

	t.Run("mqtt5", func(t *testing.T) {
		d := dialDevice(t, dep.addr, "five-1", mqttclient.V5, "app/five-1/replies")
		d.pub(t, topics.Request("mqttinfer", "v1", d.id, "anomaly"), sample("rr", 20),
			mqttclient.Properties{ResponseTopic: "app/five-1/replies", CorrelationData: []byte("corr")})
		m := d.next(t)
		if m.Topic != "app/five-1/replies" || string(m.Properties.CorrelationData) != "corr" || m.Properties.UserValue("status") != "200" {
			t.Errorf("request/response: %s %+v", m.Topic, m.Properties)
		}
		body, _ := api.MarshalCBOR(map[string]any{"id": "cb", "inputs": []any{map[string]any{"sensor": "t", "value": 1}, map[string]any{"sensor": "t", "value": 2}}})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := d.Publish(ctx, mqttclient.Message{Topic: topics.Request("mqttinfer", "v2", d.id, "anomaly"), Payload: body, QoS: 1,
			Properties: mqttclient.Properties{ContentType: api.ContentTypeCBOR}}); err != nil {
			t.Fatal(err)
		}
		m = d.next(t)
		var res struct {
			ID      string `cbor:"id"`
			Outputs []struct {
				Status int `cbor:"status"`
			} `cbor:"outputs"`
		}
		if err := cborlib.Unmarshal(m.Payload, &res); err != nil || res.ID != "cb" || len(res.Outputs) != 2 || m.Properties.ContentType != api.ContentTypeCBOR {
			t.Errorf("CBOR v2 batch: %+v %v (%+v)", res, err, m.Properties)
		}
	})

	t.Run("stream and cancel", func(t *testing.T) {
		d := dialDevice(t, dep.addr, "chat-1", mqttclient.V311)
		d.ask(t, "chat", map[string]any{"id": "q1", "stream": true, "input": map[string]any{"prompt": "why blue?"}})
		var words []string
		for seq := 0; ; seq++ {
			var ev api.StreamEvent
			if err := json.Unmarshal(d.next(t).Payload, &ev); err != nil || ev.Seq != seq || ev.ID != "q1" {
				t.Fatalf("event %d: %+v %v", seq, ev, err)
			}
			if ev.Event == api.EventDone {
				break
			}
			words = append(words, string(ev.Delta))
		}
		if len(words) != 5 {
			t.Errorf("deltas %v", words)
		}
		// A cancel reaches whoever runs the request; one for an id nobody
		// runs is a 400.
		d.ask(t, "chat", map[string]any{"id": "nothing", "cancel": true})
		if r := d.result(t); r.Status != 400 {
			t.Errorf("cancel of an unknown id: %+v", r)
		}
	})
}

// TestContractThrottle: on every shape, one device sending at ten times
// its rate is accepted its burst plus its rate over the time, within 5 %.
func TestContractThrottle(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			cfg := testConfig(t)
			smallBucket(&cfg, 10, 10)
			cfg.Throttle.MaxInFlight = 1000
			dep := sh.start(t, cfg)
			d := dialDevice(t, dep.addr, "fast-1", mqttclient.V311)
			const sent, every = 300, 10 * time.Millisecond // 100 req/s: ten times the rate
			start := time.Now()
			var last time.Time
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := range sent {
				<-tick.C
				d.ask(t, "anomaly", sample(fmt.Sprint(i), 20))
				last = time.Now()
			}
			accepted, refused := 0, 0
			for range sent {
				switch r := d.result(t); r.Status {
				case 200:
					accepted++
				case 429:
					refused++
				default:
					t.Fatalf("%+v", r)
				}
			}
			want := float64(cfg.Throttle.Burst) + cfg.Throttle.Rate*last.Sub(start).Seconds()
			t.Logf("%s: accepted %d of %d in %v, want %.1f", sh.name, accepted, sent, last.Sub(start).Round(time.Millisecond), want)
			if f := float64(accepted); f < 0.95*want || f > 1.05*want {
				t.Errorf("accepted %d, want %.1f ± 5%%", accepted, want)
			}
		})
	}
}

// TestVADChunksAcrossWorkers: a microphone's audio streamed in chunks gives
// the same segments through three workers as through the embedded node:
// its stream state stays with one worker.
func TestVADChunksAcrossWorkers(t *testing.T) {
	requireTool(t, "/usr/bin/espeak-ng", "espeak-ng")
	requireTool(t, "/usr/bin/sox", "sox")
	speech := synthSpeech(t, "the pressure in tank two is four point five bar and rising slowly")
	var want string
	for i, sh := range []shape{shapes[0], shapes[2]} {
		cfg := testConfig(t)
		withModels(&cfg)
		cfg.Throttle.Enabled = false
		var dep deployment
		if i == 0 {
			svc := startService(t, cfg)
			requireModel(t, svc, "vad")
			dep.addr = svc.MQTTAddr()
		} else {
			dep = sh.start(t, cfg)
		}
		d := dialDevice(t, dep.addr, "mic-7", mqttclient.V311)
		const chunk = 16000 * 2 / 2 // 500 ms
		n := 0
		for off := 0; off < len(speech); off += chunk {
			d.ask(t, "vad", map[string]any{"input": map[string]any{"pcm16": base64.StdEncoding.EncodeToString(speech[off:min(off+chunk, len(speech))])}})
			n++
		}
		var segs []string
		for range n {
			r := d.result(t)
			var out struct {
				Segments []struct {
					StartMS float64 `json:"start_ms"`
					EndMS   float64 `json:"end_ms"`
				} `json:"segments"`
			}
			if err := json.Unmarshal(r.Output, &out); err != nil || r.Status != 200 {
				t.Fatalf("%s: %+v", sh.name, r)
			}
			for _, s := range out.Segments {
				segs = append(segs, fmt.Sprintf("%.0f-%.0f", s.StartMS, s.EndMS))
			}
		}
		got := strings.Join(segs, " ")
		t.Logf("%s: segments %s", sh.name, got)
		if got == "" {
			t.Fatalf("%s: no speech found", sh.name)
		}
		if i == 0 {
			want = got
		} else if got != want {
			t.Errorf("%s: segments %s, embedded %s", sh.name, got, want)
		}
	}
}
