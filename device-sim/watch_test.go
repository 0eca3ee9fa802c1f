package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/topics"
)

// lineSink is an io.Writer that collects complete lines.
type lineSink struct {
	mu    sync.Mutex
	part  bytes.Buffer
	lines []string
}

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.part.Write(p)
	for {
		line, err := s.part.ReadString('\n')
		if err != nil {
			s.part.Reset()
			s.part.WriteString(line)
			return len(p), nil
		}
		s.lines = append(s.lines, strings.TrimSuffix(line, "\n"))
	}
}

func (s *lineSink) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func (s *lineSink) count() int { return len(s.snapshot()) }

// startWatch runs Watch until the test ends and waits until its
// subscription covers probeTopic.
func startWatch(t *testing.T, b *testBroker, opts WatchOptions, probeTopic string) (*lineSink, <-chan error) {
	t.Helper()
	opts.Broker = b.addr
	opts.ClientID = "watcher"
	sink := &lineSink{}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- Watch(ctx, opts, sink) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	waitFor(t, "the watcher's subscription", func() bool {
		_, ok := b.srv.Topics.Subscribers(probeTopic).Subscriptions["watcher"]
		return ok
	})
	return sink, errc
}

func TestWatchPrintsTraffic(t *testing.T) {
	b := startBroker(t)
	startResponder(t, b, "mqttinfer", "", 0)
	sink, _ := startWatch(t, b, WatchOptions{Version: "v1", Model: "anomaly"}, topics.Result("mqttinfer", "v1", "sim-0001", "anomaly"))

	rep, err := Run(t.Context(), Options{Broker: b.addr, Devices: 2, Rate: 50, Requests: 6, Drain: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK != 12 {
		t.Fatalf("sim: %+v", rep)
	}
	waitFor(t, "12 watch lines", func() bool { return sink.count() >= 12 })
	line := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} sim-[0-9a-f]{4}-000[12] anomaly 200 r-[1-6] \d+\.\d+ms doubled=-?[0-9.e+-]+ sensor=(temp|humidity|vibration) rl=\d+/10$`)
	lines := sink.snapshot()
	for _, l := range lines {
		if !line.MatchString(l) {
			t.Errorf("watch line %q does not match %s", l, line)
		}
	}
	if len(lines) != 12 {
		t.Errorf("%d watch lines for 12 replies:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

func TestWatchFiltersAndJSON(t *testing.T) {
	b := startBroker(t)
	sink, _ := startWatch(t, b, WatchOptions{Device: "d1", JSON: true}, topics.Result("mqttinfer", "v2", "d1", "m"))
	// Published in this order on one connection, so they arrive in order.
	msgs := []struct{ topic, payload string }{
		{topics.Result("mqttinfer", "v1", "d2", "m"), `{"id":"x","status":200}`}, // another device: filtered out
		{topics.Result("mqttinfer", "v2", "d1", "m"), `{"id":"a", "status":200, "output":{"n":1}}`},
		{topics.Result("mqttinfer", "v9", "d1", "m"), `not json`},
	}
	for _, m := range msgs {
		if err := b.srv.Publish(m.topic, []byte(m.payload), false, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "2 lines", func() bool { return sink.count() >= 2 })
	lines := sink.snapshot()
	var got []map[string]any
	for _, l := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		got = append(got, v)
	}
	if len(got) != 2 || got[0]["topic"] != "mqttinfer/v2/res/d1/m" || got[1]["payload"] != "not json" {
		t.Errorf("JSON lines: %s", strings.Join(lines, "\n"))
	}
	if p, ok := got[0]["payload"].(map[string]any); !ok || p["id"] != "a" {
		t.Errorf("payload not kept as JSON: %s", lines[0])
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000Z07:00", got[0]["time"].(string)); err != nil {
		t.Errorf("time: %v", err)
	}
}

func TestWatchFormat(t *testing.T) {
	at := time.Date(2025, 1, 2, 12, 0, 1, 123_000_000, time.Local)
	tests := []struct {
		name, topic, payload string
		all                  bool
		want                 string
	}{
		{"result", "mqttinfer/v1/res/sim-0001/anomaly",
			`{"id":"r-7","model":"anomaly","status":200,"output":{"score":0.81234,"is_anomaly":false,"reasons":["spike"],"detail":{"z":4}},"latency_ms":0.4,"ratelimit":{"limit":10,"remaining":7,"reset_ms":600}}`,
			false, "12:00:01.123 sim-0001 anomaly 200 r-7 0.400ms score=0.8123 is_anomaly=false reasons=[1] detail={1} rl=7/10"},
		{"throttled", "mqttinfer/v1/res/sim-0002/anomaly",
			`{"id":"r-8","model":"anomaly","status":429,"error":{"type":"rate_limited","message":"device sim-0002 is over 5 req/s","retry_after_ms":180},"ratelimit":{"limit":10,"remaining":0,"reset_ms":180}}`,
			false, `12:00:01.123 sim-0002 anomaly 429 r-8 - rate_limited retry_after_ms=180 "device sim-0002 is over 5 req/s" rl=0/10`},
		{"unsupported version, all versions", "mqttinfer/v9/res/d1/anomaly",
			`{"id":"q","model":"anomaly","status":404,"error":{"type":"unsupported_version","message":"no v9","versions":["v1","v2"]}}`,
			true, `12:00:01.123 v9 d1 anomaly 404 q - unsupported_version versions=v1,v2 "no v9"`},
		{"stream delta", "mqttinfer/v2/res/d1/chat",
			`{"id":"c1","model":"chat","seq":3,"event":"delta","delta":{"text":"hello world"}}`,
			false, `12:00:01.123 d1 chat - c1 - delta#3 text="hello world"`},
		{"not JSON", "mqttinfer/v1/res/d1/m", "\x00garbage", false, `12:00:01.123 d1 m ? not a result: "\x00garbage"`},
		{"scalar output", "mqttinfer/v1/res/d1/m", `{"id":"s","status":200,"output":3.5}`, false, `12:00:01.123 d1 m 200 s - 3.5`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &printer{prefix: "mqttinfer", showVersion: tt.all}
			if got := p.format(at, tt.topic, []byte(tt.payload)); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestWatchEnds(t *testing.T) {
	t.Run("no broker", func(t *testing.T) {
		err := Watch(t.Context(), WatchOptions{Broker: closedAddr(t)}, &lineSink{})
		if err == nil || !strings.Contains(err.Error(), "connect to") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad filter", func(t *testing.T) {
		err := Watch(t.Context(), WatchOptions{Device: "a+b"}, &lineSink{})
		if err == nil || !strings.Contains(err.Error(), "device") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("broker goes away", func(t *testing.T) {
		b := startBroker(t)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- Watch(ctx, WatchOptions{Broker: b.addr, ClientID: "watcher"}, &lineSink{}) }()
		waitFor(t, "the watcher's subscription", func() bool {
			_, ok := b.srv.Topics.Subscribers("mqttinfer/v1/res/d/m").Subscriptions["watcher"]
			return ok
		})
		b.close()
		if err := <-errc; err == nil || !strings.Contains(err.Error(), "lost the connection") {
			t.Errorf("err = %v", err)
		}
	})
}
