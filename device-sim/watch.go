package devicesim

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// WatchOptions configure Watch. Empty Version, Device or Model match any.
type WatchOptions struct {
	// Broker is the MQTT broker URL (default "tcp://127.0.0.1:1883"), or
	// several, comma-separated (the edges of a cluster): Watch moves to the
	// next when it loses one.
	Broker string
	// Prefix is the service's topic prefix (default "mqttinfer").
	Prefix string
	// Version is the API version to watch; empty = all versions.
	Version string
	// Device is the device to watch; empty = all devices.
	Device string
	// Model is the model to watch; empty = all models.
	Model string
	// ClientID is the watcher's MQTT client id (default "watch-" + 8 random hex digits).
	ClientID string
	// Username and Password, when the broker wants them (an observer role
	// may read all results).
	Username string
	Password string
	// TLSConfig configures ssl://, tls://, mqtts:// and wss:// brokers (a
	// private CA, a client certificate); nil = the system's roots.
	TLSConfig *tls.Config
	// QoS of the subscription: 0 or 1.
	QoS byte
	// JSON prints one JSON object per message instead of a readable line:
	// {"time": RFC 3339 with ms, "topic": ..., "payload": the payload as it
	// came when it is JSON, else as a string}.
	JSON bool
	// ConnectTimeout bounds the CONNECT (default 10 s).
	ConnectTimeout time.Duration
}

// Watch subscribes to the service's result topics selected by opts and
// writes one line per message to out until ctx ends, when it returns nil.
// A line reads
//
//	12:00:01.123 sim-0001 anomaly 200 r-7 0.40ms score=0.8 is_anomaly=false rl=9/10
//	12:00:01.130 sim-0002 anomaly 429 r-8 - rate_limited retry_after_ms=180 "device sim-0002 is over 5 req/s"
//
// (time, device, model, status, request id, the service's latency, then a
// compact summary of the output or the error, and the rate-limit state as
// remaining/limit). When all versions are watched, the version comes before
// the device. It fails when it cannot connect or subscribe, when the
// connection drops (with several brokers it moves to the next one
// instead), or when out cannot be written.
func Watch(ctx context.Context, opts WatchOptions, out io.Writer) error {
	opts.Prefix = cmp.Or(opts.Prefix, topics.DefaultPrefix)
	if err := topics.ValidPrefix(opts.Prefix); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	for _, f := range [][2]string{{"version", opts.Version}, {"device", opts.Device}, {"model", opts.Model}} {
		if f[1] != "" {
			if err := topics.ValidID(f[1]); err != nil {
				return fmt.Errorf("watch: %s: %w", f[0], err)
			}
		}
	}
	if opts.QoS > 1 {
		return fmt.Errorf("watch: QoS must be 0 or 1, got %d", opts.QoS)
	}
	filter := topics.ResultFilter(opts.Prefix, opts.Version, opts.Device, opts.Model)

	p := &printer{out: out, prefix: opts.Prefix, showVersion: opts.Version == "", json: opts.JSON, failed: make(chan struct{})}
	brokers := brokerURLs(opts.Broker)
	clientID := cmp.Or(opts.ClientID, randomClientID("watch-"))
	// watch1 watches through one broker until ctx ends (nil), the
	// connection drops (its error) or the output fails.
	watch1 := func(broker string) (connected bool, err error) {
		lost := make(chan error, 1)
		cl, err := dial(ctx, conn{
			broker: broker, clientID: clientID,
			username: opts.Username, password: opts.Password, tls: opts.TLSConfig, timeout: opts.ConnectTimeout,
			onLost: func(err error) {
				select {
				case lost <- err:
				default:
				}
			},
		})
		if err != nil {
			return false, err
		}
		defer cl.Disconnect(disconnectQuiesce)
		if err := subscribe(ctx, cl, filter, opts.QoS, p.handle); err != nil {
			return false, err
		}
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-lost:
			return true, fmt.Errorf("lost the connection to %s: %w", broker, err)
		case <-p.failed:
			return true, errOutput
		}
	}
	// With several brokers (the edges of a cluster), a lost or refused
	// connection moves the watcher to the next one.
	backoff := 50 * time.Millisecond
	for at := 0; ; at = (at + 1) % len(brokers) {
		connected, err := watch1(brokers[at])
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errOutput):
			return fmt.Errorf("watch: writing output: %w", p.err)
		case len(brokers) == 1:
			return fmt.Errorf("watch: %w", err)
		case connected:
			backoff = 50 * time.Millisecond
		default:
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

var errOutput = errors.New("output failed")

// printer formats messages for Watch; handle runs on paho's router goroutine.
type printer struct {
	out         io.Writer
	prefix      string
	showVersion bool
	json        bool

	mu     sync.Mutex
	err    error
	failed chan struct{} // closed on the first write error
}

func (p *printer) handle(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	var line []byte
	if p.json {
		line = jsonLine(now, m.Topic(), m.Payload())
	} else {
		line = []byte(p.format(now, m.Topic(), m.Payload()))
	}
	line = append(line, '\n')
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return
	}
	if _, err := p.out.Write(line); err != nil {
		p.err = err
		close(p.failed)
	}
}

func jsonLine(now time.Time, topic string, payload []byte) []byte {
	var raw json.RawMessage
	if json.Valid(payload) {
		var b bytes.Buffer
		if json.Compact(&b, payload) == nil {
			raw = b.Bytes()
		}
	}
	if raw == nil {
		raw, _ = json.Marshal(string(payload)) // invalid UTF-8 becomes U+FFFD
	}
	line, _ := json.Marshal(struct {
		Time    string          `json:"time"`
		Topic   string          `json:"topic"`
		Payload json.RawMessage `json:"payload"`
	}{now.Format("2006-01-02T15:04:05.000Z07:00"), topic, raw})
	return line
}

// watchMsg covers both results and stream events.
type watchMsg struct {
	ID        string          `json:"id"`
	Model     string          `json:"model"`
	Status    int             `json:"status"`
	Output    json.RawMessage `json:"output"`
	Error     *api.Error      `json:"error"`
	LatencyMS float64         `json:"latency_ms"`
	RateLimit *api.RateLimit  `json:"ratelimit"`
	Event     string          `json:"event"`
	Seq       *int            `json:"seq"`
	Delta     json.RawMessage `json:"delta"`
}

// maxLine bounds a readable line, in bytes.
const maxLine = 240

func (p *printer) format(now time.Time, topic string, payload []byte) string {
	var b strings.Builder
	b.WriteString(now.Format("15:04:05.000"))
	// Parse fills in the topic even for a version the service does not
	// support, whose errors are answered under that version.
	if t, _ := topics.Parse(p.prefix, topic); t.Kind == topics.KindResult && t.Device != "" && t.Model != "" {
		if p.showVersion {
			b.WriteString(" " + t.Version)
		}
		b.WriteString(" " + t.Device + " " + t.Model)
	} else {
		b.WriteString(" " + topic)
	}
	var m watchMsg
	if err := json.Unmarshal(payload, &m); err != nil {
		fmt.Fprintf(&b, " ? not a result: %s", quoteTrunc(string(payload), 80))
		return truncLine(b.String())
	}
	status := "-"
	if m.Status != 0 {
		status = strconv.Itoa(m.Status)
	}
	id := cmp.Or(m.ID, "-")
	lat := "-"
	if m.LatencyMS > 0 {
		lat = fmtDur(time.Duration(m.LatencyMS * float64(time.Millisecond)))
	}
	fmt.Fprintf(&b, " %s %s %s", status, id, lat)
	if m.Event != "" {
		b.WriteString(" " + m.Event)
		if m.Seq != nil {
			fmt.Fprintf(&b, "#%d", *m.Seq)
		}
		if len(m.Delta) > 0 {
			b.WriteString(" " + summarize(m.Delta))
		}
	}
	if len(m.Output) > 0 {
		b.WriteString(" " + summarize(m.Output))
	}
	if e := m.Error; e != nil {
		b.WriteString(" " + string(e.Type))
		if e.RetryAfterMS > 0 {
			fmt.Fprintf(&b, " retry_after_ms=%d", e.RetryAfterMS)
		}
		if len(e.Models) > 0 {
			fmt.Fprintf(&b, " models=%s", strings.Join(e.Models, ","))
		}
		if len(e.Versions) > 0 {
			fmt.Fprintf(&b, " versions=%s", strings.Join(e.Versions, ","))
		}
		if e.Message != "" {
			b.WriteString(" " + strconv.Quote(trunc(e.Message, 100)))
		}
	}
	if rl := m.RateLimit; rl != nil {
		fmt.Fprintf(&b, " rl=%d/%d", rl.Remaining, rl.Limit)
	}
	return truncLine(b.String())
}

// summarize prints a JSON value compactly: an object's members as k=v in
// their order, nested objects and arrays as their size.
func summarize(raw json.RawMessage) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return quoteTrunc(string(raw), 60)
	}
	if tok != json.Delim('{') {
		return scalarOrSize(tok, dec)
	}
	var parts []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			break
		}
		v, err := dec.Token()
		if err != nil {
			break
		}
		parts = append(parts, fmt.Sprint(k)+"="+scalarOrSize(v, dec))
	}
	if len(parts) == 0 {
		return "{}"
	}
	return strings.Join(parts, " ")
}

// scalarOrSize formats tok, reading the rest of the value from dec when tok
// opens an object or array.
func scalarOrSize(tok json.Token, dec *json.Decoder) string {
	switch v := tok.(type) {
	case json.Delim:
		n := 0
		for dec.More() {
			if v == '{' {
				if _, err := dec.Token(); err != nil {
					return "?"
				}
			}
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return "?"
			}
			n++
		}
		_, _ = dec.Token() // the closing delimiter
		if v == '{' {
			return fmt.Sprintf("{%d}", n)
		}
		return fmt.Sprintf("[%d]", n)
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return strconv.FormatInt(i, 10)
		}
		if f, err := v.Float64(); err == nil {
			return strconv.FormatFloat(f, 'g', 4, 64)
		}
		return v.String()
	case string:
		if v == "" || strings.ContainsAny(v, " =\"\t\n") {
			return quoteTrunc(v, 40)
		}
		return trunc(v, 40)
	case nil:
		return "null"
	}
	return fmt.Sprint(tok)
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

func quoteTrunc(s string, n int) string { return strconv.Quote(trunc(s, n)) }

func truncLine(s string) string { return trunc(s, maxLine) }
