package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// tracer collects the simulator's send and reply events.
type tracer struct {
	mu     sync.Mutex
	events []traceEvent
}

func (tr *tracer) add(e traceEvent) {
	tr.mu.Lock()
	tr.events = append(tr.events, e)
	tr.mu.Unlock()
}

func (tr *tracer) snapshot() []traceEvent {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]traceEvent(nil), tr.events...)
}

func (tr *tracer) replies() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, e := range tr.events {
		if e.Reply {
			n++
		}
	}
	return n
}

func checkSum(t *testing.T, rep Report) {
	t.Helper()
	if got := rep.OK + rep.Throttled + rep.errorCount() + rep.Lost; got != rep.Sent {
		t.Errorf("ok %d + throttled %d + errors %d + lost %d = %d, want sent %d", rep.OK, rep.Throttled, rep.errorCount(), rep.Lost, got, rep.Sent)
	}
}

// TestRunCountsEveryOutcome runs with paho clients and with lean ones:
// the counts, the latencies and retry_after are the same contract.
func TestRunCountsEveryOutcome(t *testing.T) {
	for _, lean := range []bool{false, true} {
		t.Run(map[bool]string{false: "paho", true: "lean"}[lean], func(t *testing.T) { runCountsEveryOutcome(t, lean) })
	}
}

func runCountsEveryOutcome(t *testing.T, lean bool) {
	b := startBroker(t)
	const throttled = "sim-0002"
	const retryMS = 50
	resp := startResponder(t, b, "mqttinfer", throttled, retryMS)
	tr := &tracer{}
	var progress bytes.Buffer

	opts := Options{
		Broker: b.addr, IDPrefix: "sim-", Devices: 3, Rate: 50, Requests: 25, QoS: 1,
		Duration: time.Minute, Drain: time.Second, Seed: 7,
		Progress: &progress, trace: tr.add, Lean: lean,
	}
	rep, err := Run(t.Context(), opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("\n%s", rep)

	// The responder's schedule makes every count exact: per device 25
	// requests, the 20th dropped, the 11th and 22nd overloaded; sim-0002
	// also gets 429 on its 5th, 10th, 15th and 25th.
	want := Report{Sent: 75, OK: 62, Throttled: 4, Errors: map[string]int{"overloaded": 6}, Lost: 3, Connected: 3}
	if rep.Sent != want.Sent || rep.OK != want.OK || rep.Throttled != want.Throttled || rep.Lost != want.Lost ||
		rep.Connected != want.Connected || len(rep.Errors) != 1 || rep.Errors["overloaded"] != 6 {
		t.Errorf("got sent %d ok %d throttled %d errors %v lost %d connected %d, want sent %d ok %d throttled %d errors %v lost %d connected %d",
			rep.Sent, rep.OK, rep.Throttled, rep.Errors, rep.Lost, rep.Connected,
			want.Sent, want.OK, want.Throttled, want.Errors, want.Lost, want.Connected)
	}
	checkSum(t, rep)
	if rep.Unmatched != 0 || rep.PublishErrors != 0 || rep.ConnectErrors != 0 || rep.ConnectionsLost != 0 || rep.Interrupted {
		t.Errorf("unexpected trouble: %+v", rep)
	}

	// The responder's own records agree with the report.
	seen := map[outcome]int{}
	events := resp.snapshot(t)
	for _, e := range events {
		seen[e.Outcome]++
	}
	if len(events) != rep.Sent || seen[outOK] != rep.OK || seen[outThrottled] != rep.Throttled ||
		seen[outOverloaded] != rep.Errors["overloaded"] || seen[outDropped] != rep.Lost || seen[outInvalid] != 0 {
		t.Errorf("responder saw %d requests %v; report says %+v", len(events), seen, rep)
	}

	// Latency over the answered requests, ordered percentiles.
	l := rep.Latency
	if l.Count != rep.Answered() {
		t.Errorf("latency count %d, want answered %d", l.Count, rep.Answered())
	}
	if !(0 < l.Min && l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max && l.Min <= l.Mean && l.Mean <= l.Max) {
		t.Errorf("latency out of order: %+v", l)
	}
	if rep.Elapsed <= 0 || rep.RoundTripsPerSec <= 0 || rep.CPU <= 0 || rep.CPUPerRequestUS <= 0 {
		t.Errorf("elapsed %s, round trips %g/s, sim CPU %g s (%g us a request)", rep.Elapsed, rep.RoundTripsPerSec, rep.CPU, rep.CPUPerRequestUS)
	}

	checkRetryAfter(t, tr.snapshot(), events, throttled, retryMS*time.Millisecond)

	// Request ids are unique per device.
	ids := map[string]bool{}
	for _, e := range events {
		k := e.Device + "/" + e.ID
		if e.ID == "" || ids[k] {
			t.Errorf("request id %q of %s empty or repeated", e.ID, e.Device)
		}
		ids[k] = true
	}

	// Progress is a line a second, so a short run may have none; when there
	// are lines, they are newline-terminated (a buffer is not a terminal).
	if p := progress.String(); p != "" && (!strings.HasSuffix(p, "\n") || strings.Contains(p, "\r")) {
		t.Errorf("progress to a non-terminal: %q", p)
	}
}

// checkRetryAfter checks that after each 429 with retry_after the device sent
// nothing until that long after it received it, from the simulator's side
// and from the responder's.
func checkRetryAfter(t *testing.T, trace []traceEvent, resp []respEvent, device string, retry time.Duration) {
	t.Helper()
	recvAt := map[string]time.Time{} // request id → responder receive time
	replyAt := map[string]time.Time{}
	for _, e := range resp {
		if e.Device == device {
			recvAt[e.ID] = e.RecvAt
			replyAt[e.ID] = e.ReplyAt
		}
	}
	checked := 0
	for i, e := range trace {
		if e.Device != device || !e.Reply || e.Status != 429 {
			continue
		}
		if e.RetryAfter != retry {
			t.Errorf("429 for %s: retry after %s, want %s", e.ID, e.RetryAfter, retry)
		}
		// The device's trace is in lock order, so the sends after this reply
		// are the ones decided after the device knew about the 429.
		for _, s := range trace[i+1:] {
			if s.Device != device || s.Reply {
				continue
			}
			if gap := s.At.Sub(e.At); gap < e.RetryAfter {
				t.Errorf("device sent %s %s after the 429 for %s, before retry_after %s", s.ID, gap, e.ID, e.RetryAfter)
			}
			if gap := recvAt[s.ID].Sub(replyAt[e.ID]); gap < e.RetryAfter {
				t.Errorf("responder got %s %s after replying 429 to %s, before retry_after %s", s.ID, gap, e.ID, e.RetryAfter)
			}
			checked++
			break
		}
	}
	if checked < 3 { // 429s on the 5th, 10th and 15th request are each followed by more
		t.Errorf("only %d sends after a 429 to check", checked)
	}
}

func TestRunInterrupted(t *testing.T) {
	b := startBroker(t)
	startResponder(t, b, "mqttinfer", "", 0)
	tr := &tracer{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	var rep Report
	var err error
	go func() {
		defer close(done)
		rep, err = Run(ctx, Options{Broker: b.addr, Devices: 2, Rate: 100, Duration: time.Hour, trace: tr.add})
	}()
	waitFor(t, "10 replies", func() bool { return tr.replies() >= 10 })
	cancel()
	<-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel: err = %v, want context.Canceled", err)
	}
	if !rep.Interrupted || rep.Sent < 10 || rep.OK == 0 {
		t.Errorf("report after cancel: %+v", rep)
	}
	checkSum(t, rep)
}

func TestRunConnectErrors(t *testing.T) {
	rep, err := Run(t.Context(), Options{Broker: closedAddr(t), Devices: 3, ConnectTimeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "none of 3 devices could connect") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("err = %v", err)
	}
	if rep.ConnectErrors != 3 || rep.Connected != 0 || rep.Sent != 0 || rep.ConnectError == "" {
		t.Errorf("report: %+v", rep)
	}
}

func TestRunRejectsOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"unknown model", Options{Model: "teapot"}, `inputs for model "teapot"; it can for: anomaly`},
		{"bad model id", Options{Model: "a/b"}, "model"},
		{"QoS 2", Options{QoS: 2}, "QoS must be 0 or 1"},
		{"negative rate", Options{Rate: -1}, "rate must be > 0"},
		{"negative devices", Options{Devices: -1}, "devices must be at least 1"},
		{"bad prefix", Options{Prefix: "a/+/b"}, "prefix"},
		{"bad id prefix", Options{IDPrefix: "dev ice"}, "device id prefix"},
		{"negative requests", Options{Requests: -2}, "requests per device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(t.Context(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestDeviceID(t *testing.T) {
	for _, tt := range []struct {
		i, n int
		want string
	}{{1, 1, "sim-0001"}, {42, 100, "sim-0042"}, {7, 12345, "sim-00007"}} {
		if got := deviceID("sim-", tt.i, tt.n); got != tt.want {
			t.Errorf("deviceID(%d of %d) = %q, want %q", tt.i, tt.n, got, tt.want)
		}
	}
}

func TestDefaultIDPrefixIsRandomPerRun(t *testing.T) {
	form := regexp.MustCompile(`^sim-[0-9a-f]{4}-$`)
	seen := map[string]bool{}
	for range 8 {
		var o Options
		o.setDefaults()
		if !form.MatchString(o.IDPrefix) {
			t.Fatalf("default id prefix %q, want sim-<4 hex digits>-", o.IDPrefix)
		}
		seen[o.IDPrefix] = true
	}
	if len(seen) < 2 {
		t.Errorf("8 runs drew the id prefixes %v: not random per run", seen)
	}
	o := Options{IDPrefix: "sim-"}
	o.setDefaults()
	if got := deviceID(o.IDPrefix, 1, 1); got != "sim-0001" {
		t.Errorf("an explicit id prefix gives %q, want sim-0001", got)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	rep := Report{
		Model: "anomaly", Version: "v1", QoS: 1, Devices: 2, Rate: 5, Seed: 9,
		Connected: 2, Sent: 10, OK: 7, Throttled: 1, Errors: map[string]int{"overloaded": 1}, Lost: 1,
		Elapsed: 2500 * time.Millisecond, ConnectTime: 30 * time.Millisecond, RoundTripsPerSec: 3.6,
		Latency: Latency{Count: 9, Min: time.Millisecond, Mean: 2 * time.Millisecond, P50: 2 * time.Millisecond,
			P90: 3 * time.Millisecond, P99: 4 * time.Millisecond, Max: 5 * time.Millisecond},
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"elapsed_s":2.5`, `"p99_ms":4`, `"errors":{"overloaded":1}`, `"lost":1`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Errorf("JSON %s lacks %s", b, key)
		}
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.String() != rep.String() {
		t.Errorf("round trip changed the report:\n%s\nvs\n%s", back, rep)
	}
	for _, want := range []string{"sent         10", "lost         1", "overloaded=1", "p50 2.00ms"} {
		if !strings.Contains(rep.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}

// TestRunClosedLoop: each device keeps one request outstanding, whatever
// the rate, with paho clients and with lean ones.
func TestRunClosedLoop(t *testing.T) {
	for _, lean := range []bool{false, true} {
		t.Run(map[bool]string{false: "paho", true: "lean"}[lean], func(t *testing.T) {
			b := startBroker(t)
			startResponder(t, b, "mqttinfer", "sim-0002", 20)
			tr := &tracer{}
			// 19 requests each: the responder drops every 20th, which
			// would stall a closed-loop device until the run ends.
			rep, err := Run(t.Context(), Options{Broker: b.addr, IDPrefix: "sim-", Devices: 3, Rate: 0.001, Requests: 19, QoS: 1,
				Duration: time.Minute, Drain: time.Second, ClosedLoop: true, Lean: lean, trace: tr.add})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Sent != 57 || rep.Lost != 0 || rep.Answered() != 57 {
				t.Fatalf("%s", rep)
			}
			checkSum(t, rep)
			outstanding := map[string]int{}
			for _, e := range tr.snapshot() {
				if e.Reply {
					outstanding[e.Device]--
					continue
				}
				if outstanding[e.Device]++; outstanding[e.Device] > 1 {
					t.Fatalf("%s sent %s with another request outstanding", e.Device, e.ID)
				}
			}
		})
	}
}
