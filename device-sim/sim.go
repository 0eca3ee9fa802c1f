// Package devicesim simulates a fleet of IoT devices against mqttinfer and
// ships two small client tools. It is an outside MQTT 3.1.1 client of the
// service (paho.mqtt.golang): it knows the service only through the topic
// scheme (package topics) and the wire payloads (package api).
//
//   - Run connects N devices, each its own MQTT connection whose client id is
//     the device id, sends realistic inputs at a target rate, honours
//     retry_after_ms on 429 replies, matches replies by request id, and
//     returns a load Report (throughput, latency percentiles, throttled,
//     errors by type, lost).
//   - Watch prints result traffic, one line per message.
//   - Models prints the retained model catalog.
package devicesim

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Defaults of Options; a zero field takes its default.
const (
	DefaultDevices = 1
	// DefaultIDPrefix starts the default device id prefix, which adds 4
	// random hex digits and '-' at each Run ("sim-3f9c-"), so that two
	// simulators on one broker never share an id.
	DefaultIDPrefix           = "sim-"
	DefaultModel              = "anomaly"
	DefaultRate               = 1.0 // requests/s per device
	DefaultDuration           = 10 * time.Second
	DefaultDrain              = 5 * time.Second
	DefaultConnectConcurrency = 32
)

// Options configure a Run. The zero value runs one device "sim-<4 random
// hex digits>-0001" sending one "anomaly" request per second for 10 s to
// 127.0.0.1:1883.
type Options struct {
	// Broker is the MQTT broker URL ("tcp://127.0.0.1:1883"; "host:port"
	// means tcp), or several, comma-separated (the edges of a cluster):
	// the devices are spread over them, and a device that loses its broker
	// moves to the next one and goes on.
	Broker string
	// Prefix is the service's topic prefix (default "mqttinfer").
	Prefix string
	// Version is the API version of the topics (default "v1"). Any valid id is
	// accepted, so that the service's answer to an unsupported version can be
	// exercised.
	Version string
	// Devices is how many devices to simulate (default 1).
	Devices int
	// IDPrefix starts every device id; ids are IDPrefix + a 1-based index
	// zero-padded to at least 4 digits ("sim-0001" for "sim-"). Two
	// simulators with the same prefix on one broker take over each other's
	// connections, so the default is DefaultIDPrefix + 4 random hex digits +
	// "-", drawn at each Run ("sim-3f9c-0001").
	IDPrefix string
	// Model is the model to call (default "anomaly"); see InputModels.
	Model string
	// Rate is each device's target request rate, in requests per second
	// (default 1). Sends are paced on a fixed schedule with a random start
	// within the first interval; a device that falls behind (slow broker,
	// retry_after) does not burst to catch up.
	Rate float64
	// Requests stops each device after this many requests; 0 = no limit.
	// The run ends when every device has stopped or Duration has passed.
	Requests int
	// QoS of requests and of the result subscription: 0 or 1.
	QoS byte
	// Duration of the sending phase (default 10 s).
	Duration time.Duration
	// Drain is how long to wait after the sending phase for replies still
	// outstanding (default 5 s; negative = do not wait). The drain ends early
	// when nothing is outstanding.
	Drain time.Duration
	// Username and Password are sent by every device when set.
	Username string
	Password string
	// TLSConfig configures ssl://, tls://, mqtts:// and wss:// brokers (a
	// private CA, a client certificate); nil = the system's roots.
	TLSConfig *tls.Config
	// Credentials, when set, gives each device its own username and password
	// and overrides Username and Password.
	Credentials func(device string) (username, password string)
	// Progress, when set, gets a one-line progress report every second of
	// the sending phase: overwritten in place (\r) when it is a terminal,
	// one line each otherwise.
	Progress io.Writer
	// Seed seeds the inputs and the send schedule; 0 picks a random seed,
	// which the Report records.
	Seed int64
	// ConnectConcurrency bounds how many devices connect (and disconnect) at
	// once (default 32).
	ConnectConcurrency int
	// ConnectTimeout bounds each device's CONNECT (default 10 s).
	ConnectTimeout time.Duration
	// Lean runs every device on a lean MQTT 3.1.1 connection (packets
	// encoded with mochi's packets package, one reader goroutine each) and
	// paces all of them from a few shared sender goroutines, instead of a
	// paho client and a sender goroutine per device: for thousands of
	// devices, so that the simulator is not what limits a benchmark. It
	// dials tcp://, ssl:// and unix:// brokers, and has no failover.
	Lean bool
	// ClosedLoop makes each device keep one request outstanding: it sends
	// the next as soon as the last is answered, and Rate is ignored. The
	// round trips per second of such a run are the service's peak for
	// that many devices (each device waits for its reply, so a saturated
	// service slows the senders instead of queueing their requests).
	ClosedLoop bool
	// Logger gets connection problems, and synthetic inputs standing in for
	// missing data, at Warn level; nil = discard.
	Logger *slog.Logger
	// Inputs shape the audio and image inputs (vad chunk length, detect
	// frame size, ocr image width, where speech and photos come from, the
	// largest input); the zero value takes every default. Its Logger
	// defaults to Logger.
	Inputs InputOptions

	// trace, when set (tests only), is called under the device's lock at
	// every send and every reply received.
	trace func(traceEvent)
}

// traceEvent is one send or reply of one device, for tests.
type traceEvent struct {
	Device     string
	ID         string
	Reply      bool // false: a send
	Status     int
	RetryAfter time.Duration
	At         time.Time
}

func (o *Options) setDefaults() {
	o.Broker = cmp.Or(o.Broker, DefaultBroker)
	o.Prefix = cmp.Or(o.Prefix, topics.DefaultPrefix)
	o.Version = cmp.Or(o.Version, DefaultVersion)
	o.Devices = cmp.Or(o.Devices, DefaultDevices)
	if o.IDPrefix == "" {
		o.IDPrefix = DefaultIDPrefix + randomHex(2) + "-"
	}
	o.Model = cmp.Or(o.Model, DefaultModel)
	o.Rate = cmp.Or(o.Rate, DefaultRate)
	o.Duration = cmp.Or(o.Duration, DefaultDuration)
	o.Drain = cmp.Or(o.Drain, DefaultDrain)
	o.ConnectConcurrency = cmp.Or(o.ConnectConcurrency, DefaultConnectConcurrency)
	o.ConnectTimeout = cmp.Or(o.ConnectTimeout, defaultConnectTimeout)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Lean {
		// One connection each, no failover: the devices are spread
		// over the brokers of the list all the same.
		o.ConnectConcurrency = max(o.ConnectConcurrency, 64)
	}
	if o.Seed == 0 {
		o.Seed = rand.Int64()
	}
}

func (o *Options) validate() error {
	if err := topics.ValidPrefix(o.Prefix); err != nil {
		return fmt.Errorf("device-sim: %w", err)
	}
	if err := topics.ValidID(o.Version); err != nil {
		return fmt.Errorf("device-sim: API version: %w", err)
	}
	if err := topics.ValidID(o.Model); err != nil {
		return fmt.Errorf("device-sim: model: %w", err)
	}
	switch {
	case o.Devices < 0:
		return fmt.Errorf("device-sim: devices must be at least 1, got %d", o.Devices)
	case !(o.Rate > 0):
		return fmt.Errorf("device-sim: rate must be > 0 requests/s, got %g", o.Rate)
	case o.Rate > 1e6:
		return fmt.Errorf("device-sim: rate %g requests/s per device is beyond what one connection can pace", o.Rate)
	case o.Requests < 0:
		return fmt.Errorf("device-sim: requests per device must be >= 0 (0 = no limit), got %d", o.Requests)
	case o.QoS > 1:
		return fmt.Errorf("device-sim: QoS must be 0 or 1, got %d", o.QoS)
	case o.Duration < 0:
		return fmt.Errorf("device-sim: duration must be > 0, got %s", o.Duration)
	case o.ConnectConcurrency < 0:
		return fmt.Errorf("device-sim: connect concurrency must be >= 1, got %d", o.ConnectConcurrency)
	}
	if err := topics.ValidID(deviceID(o.IDPrefix, o.Devices, o.Devices)); err != nil {
		return fmt.Errorf("device-sim: device id prefix %q: %w", o.IDPrefix, err)
	}
	return nil
}

// deviceID is the id of device i (1-based) of n.
func deviceID(prefix string, i, n int) string {
	width := max(4, len(strconv.Itoa(n)))
	return fmt.Sprintf("%s%0*d", prefix, width, i)
}

// run is the state shared by the devices of one Run.
type run struct {
	opts  Options
	hist  histogram
	start time.Time

	sent, ok, throttled, unmatched, publishErrors atomic.Int64
	answered                                      atomic.Int64
	connLost, failovers, resent                   atomic.Int64

	brokers []string // opts.Broker, split

	mu     sync.Mutex
	errors map[string]int
}

// Run simulates opts.Devices devices against the service and reports what
// happened. Each device connects with its own client id (its device id) and
// a clean session, subscribes to its own result topic before its first
// request, then sends at opts.Rate until opts.Duration has passed or it has
// sent opts.Requests; Run then waits up to opts.Drain for outstanding replies
// and disconnects every device before it returns.
//
// Devices that fail to connect are counted in Report.ConnectErrors and the
// run goes on without them; Run fails only when none connects. When ctx ends
// first, Run stops at once and returns the report so far (Interrupted) with
// an error wrapping ctx.Err().
func Run(ctx context.Context, opts Options) (Report, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return Report{}, err
	}
	if opts.Inputs.Logger == nil {
		opts.Inputs.Logger = opts.Logger
	}
	newInput, src, err := PrepareInput(ctx, opts.Model, opts.Inputs)
	if err != nil {
		return Report{}, fmt.Errorf("device-sim: %w", err)
	}
	r := &run{opts: opts, errors: map[string]int{}, brokers: brokerURLs(opts.Broker)}
	rep := Report{
		Model: opts.Model, Version: opts.Version, QoS: opts.QoS,
		Devices: opts.Devices, Rate: opts.Rate, Seed: opts.Seed,
		Inputs: src.Description, InputFallback: src.Fallback,
	}

	devs := make([]*device, opts.Devices)
	for i := range devs {
		id := deviceID(opts.IDPrefix, i+1, opts.Devices)
		rng := rand.New(rand.NewPCG(uint64(opts.Seed), uint64(i)))
		devs[i] = newDevice(r, id, i, newInput(id, rng), rng)
	}

	// Connect and subscribe, bounded.
	connStart := time.Now()
	var firstErr error
	var errMu sync.Mutex
	forEach(devs, opts.ConnectConcurrency, func(d *device) {
		if err := d.connect(ctx); err != nil {
			errMu.Lock()
			defer errMu.Unlock()
			if ctx.Err() == nil {
				rep.ConnectErrors++
				if firstErr == nil {
					firstErr = err
				}
				opts.Logger.Warn("device could not connect", "device", d.id, "err", err)
			}
		}
	})
	rep.ConnectTime = time.Since(connStart)
	if firstErr != nil {
		rep.ConnectError = firstErr.Error()
	}
	var live []*device
	for _, d := range devs {
		if d.client != nil {
			live = append(live, d)
		}
	}
	rep.Connected = len(live)
	disconnectAll := func() {
		forEach(live, opts.ConnectConcurrency, func(d *device) { d.client.disconnect() })
	}
	if err := ctx.Err(); err != nil {
		disconnectAll()
		rep.Interrupted = true
		return rep, fmt.Errorf("device-sim: stopped while connecting: %w", err)
	}
	if len(live) == 0 {
		return rep, fmt.Errorf("device-sim: none of %d devices could connect: %w", opts.Devices, firstErr)
	}

	// Send.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	cpu0 := processCPU()
	r.start = time.Now()
	if opts.Lean && !opts.ClosedLoop {
		senders := min(runtime.GOMAXPROCS(0), len(live))
		for i := range senders {
			var mine []*device
			for j := i; j < len(live); j += senders {
				mine = append(mine, live[j])
			}
			wg.Go(func() { schedule(mine, stop) })
		}
	} else {
		for _, d := range live {
			wg.Go(func() { d.send(stop) })
		}
	}
	sendersDone := make(chan struct{})
	go func() { wg.Wait(); close(sendersDone) }()
	progressDone := make(chan struct{})
	progressStopped := make(chan struct{})
	go func() { defer close(progressStopped); r.progress(progressDone) }()

	timer := time.NewTimer(opts.Duration)
	select {
	case <-timer.C:
	case <-sendersDone:
	case <-ctx.Done():
	}
	timer.Stop()
	close(stop)
	<-sendersDone
	rep.Elapsed = time.Since(r.start)
	close(progressDone)
	<-progressStopped

	// Drain.
	if ctx.Err() == nil && opts.Drain > 0 {
		r.drain(ctx, opts.Drain)
	}
	interrupted := ctx.Err() != nil
	rep.CPU = (processCPU() - cpu0).Seconds()

	// Stop the devices before reading their state: once Disconnect returns,
	// paho delivers no more replies.
	disconnectAll()
	for _, d := range devs {
		rep.Lost += d.outstanding()
	}
	rep.Sent = int(r.sent.Load())
	rep.OK = int(r.ok.Load())
	rep.Throttled = int(r.throttled.Load())
	rep.Unmatched = int(r.unmatched.Load())
	rep.PublishErrors = int(r.publishErrors.Load())
	rep.ConnectionsLost = int(r.connLost.Load())
	rep.Failovers = int(r.failovers.Load())
	rep.Resent = int(r.resent.Load())
	r.mu.Lock()
	rep.Errors = r.errors
	r.mu.Unlock()
	rep.Latency = r.hist.latency()
	if s := rep.Elapsed.Seconds(); s > 0 {
		rep.RoundTripsPerSec = float64(rep.Answered()) / s
	}
	if n := rep.Answered(); n > 0 {
		rep.CPUPerRequestUS = 1e6 * rep.CPU / float64(n)
	}
	if interrupted {
		rep.Interrupted = true
		return rep, fmt.Errorf("device-sim: stopped early: %w", ctx.Err())
	}
	return rep, nil
}

// drain waits until no request is outstanding, d has passed, or ctx ends.
func (r *run) drain(ctx context.Context, d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for r.sent.Load() > r.answered.Load() {
		select {
		case <-tick.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// forEach calls f on every device, at most n at a time, and waits.
func forEach(devs []*device, n int, f func(*device)) {
	sem := make(chan struct{}, max(n, 1))
	var wg sync.WaitGroup
	for _, d := range devs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(d)
		})
	}
	wg.Wait()
}

// progress prints a progress line every second until done is closed.
func (r *run) progress(done <-chan struct{}) {
	w := r.opts.Progress
	if w == nil {
		<-done
		return
	}
	term := isTerminal(w)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastAnswered int64
	lastAt := r.start
	for {
		select {
		case <-done:
			if term {
				_, _ = io.WriteString(w, "\n")
			}
			return
		case now := <-tick.C:
			sent, answered := r.sent.Load(), r.answered.Load()
			rate := float64(answered-lastAnswered) / now.Sub(lastAt).Seconds()
			lastAnswered, lastAt = answered, now
			r.mu.Lock()
			errs := 0
			for _, n := range r.errors {
				errs += n
			}
			r.mu.Unlock()
			line := fmt.Sprintf("%4.0fs  sent %d  ok %d  429 %d  err %d  in flight %d  %.0f rt/s  p50 %s  p99 %s",
				now.Sub(r.start).Seconds(), sent, r.ok.Load(), r.throttled.Load(), errs, sent-answered, rate,
				fmtDur(r.hist.quantile(0.5)), fmtDur(r.hist.quantile(0.99)))
			if lost := r.connLost.Load(); lost > 0 {
				line += fmt.Sprintf("  connections lost %d", lost)
			}
			if term {
				_, _ = io.WriteString(w, "\r"+line+"\x1b[K")
			} else {
				_, _ = io.WriteString(w, line+"\n")
			}
		}
	}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// record counts one reply that answered an outstanding request.
func (r *run) record(res *api.Result, rtt time.Duration) {
	r.hist.record(rtt)
	switch {
	case res.Status == api.StatusOK:
		r.ok.Add(1)
	case res.Status == api.RateLimited.Status():
		r.throttled.Add(1)
	default:
		typ := "status_" + strconv.Itoa(res.Status)
		if res.Error != nil && res.Error.Type != "" {
			typ = string(res.Error.Type)
		}
		r.mu.Lock()
		r.errors[typ]++
		r.mu.Unlock()
	}
	r.answered.Add(1) // last, so that drain and progress never see answered > counted
}
