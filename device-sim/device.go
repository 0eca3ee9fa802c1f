package devicesim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// device is one simulated device: one MQTT connection at a time, one
// sender goroutine, and the replies it is waiting for. With several
// brokers, it starts on one of them (devices are spread over them) and
// moves to the next when it loses its connection.
type device struct {
	run      *run
	id       string
	reqTopic string
	resTopic string
	gen      Generator
	rng      *rand.Rand // used by the sender goroutine only (schedule and inputs)
	at       int        // the broker it uses, an index into run.brokers

	// client and dead (closed when client's connection drops) are set by
	// connect, on the sender goroutine (or before it starts).
	client mqtt.Client
	dead   chan struct{}

	wake chan struct{} // a reply moved notBefore; capacity 1

	mu        sync.Mutex
	pending   map[string]time.Time // request id → when it was sent
	seq       uint64
	notBefore time.Time // no send before this (retry_after_ms of the last 429)
}

func newDevice(r *run, id string, index int, gen Generator, rng *rand.Rand) *device {
	o := r.opts
	return &device{
		run:      r,
		id:       id,
		reqTopic: topics.Request(o.Prefix, o.Version, id, o.Model),
		resTopic: topics.Result(o.Prefix, o.Version, id, o.Model),
		gen:      gen,
		rng:      rng,
		at:       index % len(r.brokers),
		wake:     make(chan struct{}, 1),
		pending:  map[string]time.Time{},
	}
}

// connect connects the device to its broker, or to the next ones in turn
// when it does not answer, and subscribes it to its result topic; on
// success d.client and d.dead are set.
func (d *device) connect(ctx context.Context) error {
	o := d.run.opts
	user, pass := o.Username, o.Password
	if o.Credentials != nil {
		user, pass = o.Credentials(d.id)
	}
	var err error
	for range d.run.brokers {
		dead := make(chan struct{})
		var once sync.Once
		var cl mqtt.Client
		broker := d.run.brokers[d.at]
		cl, err = dial(ctx, conn{
			broker: broker, clientID: d.id, username: user, password: pass, tls: o.TLSConfig, timeout: o.ConnectTimeout,
			onLost: func(err error) { once.Do(func() { close(dead); d.lost(broker, err) }) },
		})
		if err == nil {
			if err = subscribe(ctx, cl, d.resTopic, o.QoS, d.onReply); err == nil {
				d.client, d.dead = cl, dead
				return nil
			}
			cl.Disconnect(disconnectQuiesce)
			err = fmt.Errorf("device %s: %w", d.id, err)
		}
		if ctx.Err() != nil {
			return err
		}
		d.at = (d.at + 1) % len(d.run.brokers)
	}
	return err
}

// lost counts a dropped connection (paho's connection-lost callback).
func (d *device) lost(broker string, err error) {
	d.run.connLost.Add(1)
	d.run.opts.Logger.Warn("device lost its connection", "device", d.id, "broker", broker, "err", err)
}

// failover connects the device to the next broker after it lost its
// connection, when there are several; it reports whether it is connected
// again (it gives up when stop closes).
func (d *device) failover(stop <-chan struct{}) bool {
	if len(d.run.brokers) < 2 {
		return false
	}
	backoff := 50 * time.Millisecond
	for {
		d.at = (d.at + 1) % len(d.run.brokers)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := d.connect(ctx)
		cancel()
		if err == nil {
			d.run.failovers.Add(1)
			d.run.opts.Logger.Info("device moved to another broker", "device", d.id, "broker", d.run.brokers[d.at])
			return true
		}
		select {
		case <-stop:
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// send publishes requests on the device's schedule until stop is closed, the
// connection drops, or opts.Requests have been sent.
func (d *device) send(stop <-chan struct{}) {
	o := d.run.opts
	interval := time.Duration(float64(time.Second) / o.Rate)
	// A random start within the first interval spreads a fleet's sends.
	next := time.Now().Add(time.Duration(d.rng.Int64N(int64(max(interval, 1)))))
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var input json.RawMessage
	for n := 0; o.Requests == 0 || n < o.Requests; {
		if input == nil {
			b, err := json.Marshal(d.gen())
			if err != nil { // a generator bug, not something a run can go on with
				d.run.opts.Logger.Error("input generator made unencodable input", "device", d.id, "model", o.Model, "err", err)
				return
			}
			input = b
		}
		// Decide and register under the lock, so that a 429 that arrives
		// concurrently either comes after this send or delays it.
		d.mu.Lock()
		now := time.Now()
		at := next
		if d.notBefore.After(at) {
			at = d.notBefore
		}
		if now.Before(at) {
			d.mu.Unlock()
			timer.Reset(at.Sub(now))
			select {
			case <-timer.C:
			case <-d.wake:
				timer.Stop()
			case <-stop:
				return
			case <-d.dead:
				if !d.failover(stop) {
					return
				}
			}
			continue
		}
		d.seq++
		id := "r-" + strconv.FormatUint(d.seq, 10)
		d.pending[id] = now
		if o.trace != nil {
			o.trace(traceEvent{Device: d.id, ID: id, At: now})
		}
		d.mu.Unlock()

		body, _ := json.Marshal(api.Request{ID: id, Input: input}) // cannot fail: input is valid JSON
		tok := d.client.Publish(d.reqTopic, o.QoS, false, body)
		if failed, err := tokenFailed(tok); failed {
			d.mu.Lock()
			delete(d.pending, id)
			d.mu.Unlock()
			d.run.publishErrors.Add(1)
			if errors.Is(err, mqtt.ErrNotConnected) {
				if !d.failover(stop) {
					return
				}
				continue
			}
		} else {
			d.run.sent.Add(1)
			input = nil
			n++
		}
		next = next.Add(interval)
		if next.Before(now) { // more than an interval behind: do not burst to catch up
			next = now.Add(interval)
		}
		select {
		case <-stop:
			return
		case <-d.dead:
			if !d.failover(stop) {
				return
			}
		default:
		}
	}
}

// tokenFailed reports whether a publish token has already failed. A QoS 0
// token completes when the message is handed to the writer, a QoS 1 token
// on PUBACK; neither is waited for, so that pacing does not depend on the
// broker's acks. Failures that come later show up as lost requests.
func tokenFailed(tok mqtt.Token) (bool, error) {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return true, err
		}
	default:
	}
	return false, nil
}

// onReply is the handler of the device's result subscription. It runs on
// paho's router goroutine and never blocks.
func (d *device) onReply(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	var res api.Result
	if err := json.Unmarshal(m.Payload(), &res); err != nil || res.Status == 0 {
		// Not a result (not JSON, or a stream event without a status): the
		// simulator does not ask for streams, so it cannot be ours.
		d.run.unmatched.Add(1)
		return
	}
	var retry time.Duration
	if res.Status == api.RateLimited.Status() && res.Error != nil && res.Error.RetryAfterMS > 0 {
		retry = time.Duration(res.Error.RetryAfterMS) * time.Millisecond
	}
	d.mu.Lock()
	sentAt, ok := d.pending[res.ID]
	if ok {
		delete(d.pending, res.ID)
	}
	if retry > 0 {
		if nb := now.Add(retry); nb.After(d.notBefore) {
			d.notBefore = nb
		}
	}
	if t := d.run.opts.trace; t != nil {
		t(traceEvent{Device: d.id, ID: res.ID, Reply: true, Status: res.Status, RetryAfter: retry, At: now})
	}
	d.mu.Unlock()
	if retry > 0 {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	if !ok {
		d.run.unmatched.Add(1)
		return
	}
	d.run.record(&res, now.Sub(sentAt))
}

// outstanding is the number of requests sent and not answered.
func (d *device) outstanding() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}
