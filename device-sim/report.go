package devicesim

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Report is the outcome of a Run. The counts add up:
// Sent = OK + Throttled + the sum of Errors + Lost.
//
// It encodes to JSON with durations in milliseconds (fields ending in _ms)
// and seconds (elapsed_s, connect_s), for benchmark records.
type Report struct {
	// What was asked for.
	Model   string  `json:"model"`
	Version string  `json:"version"`
	QoS     byte    `json:"qos"`
	Devices int     `json:"devices"`
	Rate    float64 `json:"rate"` // target requests/s per device
	Seed    int64   `json:"seed"` // the seed used (a random one when Options.Seed was 0)
	// Inputs says what the inputs were made from (InputSource.Description).
	Inputs string `json:"inputs,omitempty"`
	// InputFallback is true when synthetic inputs stood in for missing
	// data (espeak-ng, photos); Inputs says why.
	InputFallback bool `json:"input_fallback,omitempty"`

	// Connections.
	Connected       int    `json:"connected"`
	ConnectErrors   int    `json:"connect_errors"`
	ConnectError    string `json:"connect_error,omitempty"` // the first connect error, as a sample
	ConnectionsLost int    `json:"connections_lost"`        // devices whose connection dropped during the run
	Failovers       int    `json:"failovers"`               // reconnections to another broker of the list
	// Resent counts requests published again after a failover because
	// the broker that went away had not acknowledged them.
	Resent int `json:"resent"`

	// Requests.
	Sent      int            `json:"sent"`
	OK        int            `json:"ok"`        // status 200
	Throttled int            `json:"throttled"` // status 429
	Errors    map[string]int `json:"errors"`    // other error replies, by error.type
	Lost      int            `json:"lost"`      // sent but not answered by the end of the drain
	// Unmatched counts replies that answered no outstanding request:
	// duplicates, replies that were not JSON, replies to someone else's ids.
	// They are not part of the sum above.
	Unmatched int `json:"unmatched"`
	// PublishErrors counts requests paho refused to send (not connected,
	// write timeout); they are not counted as Sent.
	PublishErrors int `json:"publish_errors"`

	// Elapsed is the sending phase (from the first device starting to send to
	// the last one stopping); the drain is not part of it.
	Elapsed time.Duration `json:"-"`
	// ConnectTime is how long connecting and subscribing all devices took.
	ConnectTime time.Duration `json:"-"`
	// RoundTripsPerSec is answered requests (OK, Throttled, Errors) / Elapsed.
	RoundTripsPerSec float64 `json:"round_trips_per_sec"`
	// Latency is the round trip, publish to reply, over answered requests.
	Latency Latency `json:"latency"`
	// CPU is the simulator's own CPU time (user + system, all its
	// threads) over the sending phase and the drain, in seconds, and
	// CPUPerRequestUS that over the answered requests: beside the
	// service's, it says which side of a benchmark was saturated.
	CPU             float64 `json:"sim_cpu_s"`
	CPUPerRequestUS float64 `json:"sim_cpu_per_request_us"`
	// Interrupted is true when the context ended the run early: there was no
	// drain, and Lost includes requests that were still in flight.
	Interrupted bool `json:"interrupted"`
}

// Latency summarises round-trip times. The percentiles are nearest-rank and
// within ±1% of the exact value (log-bucket histogram); Min, Max and Mean are
// exact.
type Latency struct {
	Count int
	Min   time.Duration
	Mean  time.Duration
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	Max   time.Duration
}

type latencyJSON struct {
	Count int     `json:"count"`
	Min   float64 `json:"min_ms"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(d time.Duration) float64          { return float64(d) / float64(time.Millisecond) }
func fromMS(f float64) time.Duration      { return time.Duration(f * float64(time.Millisecond)) }
func fromSeconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// MarshalJSON encodes the durations as float milliseconds.
func (l Latency) MarshalJSON() ([]byte, error) {
	return json.Marshal(latencyJSON{l.Count, ms(l.Min), ms(l.Mean), ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max)})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (l *Latency) UnmarshalJSON(b []byte) error {
	var j latencyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*l = Latency{j.Count, fromMS(j.Min), fromMS(j.Mean), fromMS(j.P50), fromMS(j.P90), fromMS(j.P99), fromMS(j.Max)}
	return nil
}

type reportPlain Report // without methods, so the encoder does not recurse

type reportJSON struct {
	reportPlain
	Elapsed     float64 `json:"elapsed_s"`
	ConnectTime float64 `json:"connect_s"`
}

// MarshalJSON encodes the report with Elapsed and ConnectTime in seconds.
func (r Report) MarshalJSON() ([]byte, error) {
	if r.Errors == nil {
		r.Errors = map[string]int{}
	}
	return json.Marshal(reportJSON{reportPlain(r), r.Elapsed.Seconds(), r.ConnectTime.Seconds()})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (r *Report) UnmarshalJSON(b []byte) error {
	var j reportJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Report(j.reportPlain)
	r.Elapsed = fromSeconds(j.Elapsed)
	r.ConnectTime = fromSeconds(j.ConnectTime)
	return nil
}

// Answered is the number of requests that got a reply.
func (r Report) Answered() int { return r.OK + r.Throttled + r.errorCount() }

func (r Report) errorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// String is the report as WriteTo prints it.
func (r Report) String() string {
	var b strings.Builder
	_, _ = r.WriteTo(&b)
	return b.String()
}

// WriteTo prints the report for a person, one figure per line.
func (r Report) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	pct := func(n int) string {
		if r.Sent == 0 {
			return ""
		}
		return fmt.Sprintf("  (%.1f%%)", 100*float64(n)/float64(r.Sent))
	}
	fmt.Fprintf(&b, "device-sim: %d devices × %g req/s, model %s, API %s, QoS %d, seed %d\n", r.Devices, r.Rate, r.Model, r.Version, r.QoS, r.Seed)
	if r.Inputs != "" {
		label := "inputs      "
		if r.InputFallback {
			label = "inputs (!)  "
		}
		fmt.Fprintf(&b, "  %s %s\n", label, r.Inputs)
	}
	if r.Interrupted {
		fmt.Fprintf(&b, "  INTERRUPTED: stopped early, no drain; lost includes requests still in flight\n")
	}
	fmt.Fprintf(&b, "  connected    %d in %s", r.Connected, r.ConnectTime.Round(time.Millisecond))
	if r.ConnectErrors > 0 {
		fmt.Fprintf(&b, ", %d failed (%s)", r.ConnectErrors, r.ConnectError)
	}
	if r.ConnectionsLost > 0 {
		fmt.Fprintf(&b, ", %d lost their connection", r.ConnectionsLost)
	}
	if r.Failovers > 0 {
		fmt.Fprintf(&b, ", %d moved to another broker", r.Failovers)
	}
	if r.Resent > 0 {
		fmt.Fprintf(&b, ", %d unacknowledged requests sent again", r.Resent)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "  elapsed      %s\n", r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "  sent         %d\n", r.Sent)
	fmt.Fprintf(&b, "  ok           %d%s\n", r.OK, pct(r.OK))
	fmt.Fprintf(&b, "  throttled    %d%s  (429 rate_limited)\n", r.Throttled, pct(r.Throttled))
	fmt.Fprintf(&b, "  errors       %d%s", r.errorCount(), pct(r.errorCount()))
	types := make([]string, 0, len(r.Errors))
	for t := range r.Errors {
		types = append(types, t)
	}
	slices.Sort(types)
	for _, t := range types {
		fmt.Fprintf(&b, "  %s=%d", t, r.Errors[t])
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "  lost         %d%s  (no reply by the end of the drain)\n", r.Lost, pct(r.Lost))
	if r.Unmatched > 0 || r.PublishErrors > 0 {
		fmt.Fprintf(&b, "  unmatched    %d replies, %d publishes refused by the client\n", r.Unmatched, r.PublishErrors)
	}
	fmt.Fprintf(&b, "  round trips  %.1f/s\n", r.RoundTripsPerSec)
	fmt.Fprintf(&b, "  sim CPU      %.2f s, %.1f us per answered request\n", r.CPU, r.CPUPerRequestUS)
	l := r.Latency
	if l.Count > 0 {
		fmt.Fprintf(&b, "  latency      p50 %s  p90 %s  p99 %s  max %s  (mean %s, n=%d)\n",
			fmtDur(l.P50), fmtDur(l.P90), fmtDur(l.P99), fmtDur(l.Max), fmtDur(l.Mean), l.Count)
	} else {
		b.WriteString("  latency      no replies\n")
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// fmtDur prints a latency with three significant digits in ms (or s past 10 s).
func fmtDur(d time.Duration) string {
	m := ms(d)
	switch {
	case m >= 10000:
		return fmt.Sprintf("%.1fs", m/1000)
	case m >= 100:
		return fmt.Sprintf("%.0fms", m)
	case m >= 10:
		return fmt.Sprintf("%.1fms", m)
	case m >= 1:
		return fmt.Sprintf("%.2fms", m)
	}
	return fmt.Sprintf("%.3fms", m)
}
