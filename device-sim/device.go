package devicesim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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
	client client
	dead   <-chan struct{}

	// The schedule, used by the device's sender only.
	interval time.Duration
	next     time.Time
	n        int             // requests sent
	input    json.RawMessage // the next request's input, made ahead

	wake chan struct{} // a reply moved notBefore; capacity 1

	mu        sync.Mutex
	pending   map[string]*request // by request id
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
		pending:  map[string]*request{},
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
		broker := d.run.brokers[d.at]
		if o.Lean {
			var l *leanConn
			l, err = leanDial(ctx, broker, d.id, user, pass, o.TLSConfig, o.ConnectTimeout, d.resTopic, o.QoS, d.onReply,
				func(err error) { d.lost(broker, err) })
			if err == nil {
				d.client, d.dead = leanClient{l}, l.dead
				return nil
			}
		} else {
			dead := make(chan struct{})
			var once sync.Once
			var cl mqtt.Client
			cl, err = dial(ctx, conn{
				broker: broker, clientID: d.id, username: user, password: pass, tls: o.TLSConfig, timeout: o.ConnectTimeout,
				onLost: func(err error) { once.Do(func() { close(dead); d.lost(broker, err) }) },
			})
			if err == nil {
				if err = subscribe(ctx, cl, d.resTopic, o.QoS, func(_ mqtt.Client, m mqtt.Message) { d.onReply(m.Payload()) }); err == nil {
					d.client, d.dead = pahoClient{cl}, dead
					return nil
				}
				cl.Disconnect(disconnectQuiesce)
				err = fmt.Errorf("device %s: %w", d.id, err)
			}
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
			d.resend()
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

// resend publishes again, on the new connection, the requests the broker
// that went away never acknowledged: with a clean session nobody else
// will, and the service answers a request it did take once (by its id).
func (d *device) resend() {
	d.mu.Lock()
	var unacked []*request
	for _, r := range d.pending {
		if r.acked != nil && !r.acked() {
			unacked = append(unacked, r)
		}
	}
	d.mu.Unlock()
	slices.SortFunc(unacked, func(a, b *request) int { return a.at.Compare(b.at) })
	for _, r := range unacked {
		acked, err := d.client.publish(d.reqTopic, d.run.opts.QoS, r.body)
		if err != nil {
			return // the next failover tries again
		}
		d.mu.Lock()
		r.acked = acked
		d.mu.Unlock()
		d.run.resent.Add(1)
	}
}

// send publishes requests on the device's schedule until stop is closed, the
// connection drops, or opts.Requests have been sent.
func (d *device) send(stop <-chan struct{}) {
	d.startSchedule()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		res, at := d.trySend(time.Now())
		switch res {
		case finished:
			return
		case lostConnection:
			if !d.failover(stop) {
				return
			}
			continue
		case notYet:
			timer.Reset(time.Until(at))
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

// sendResult is what trySend did.
type sendResult int

const (
	sentOne        sendResult = iota // sent a request (or failed to, and moved on)
	notYet                           // nothing to send before the time returned
	lostConnection                   // the connection is gone
	finished                         // opts.Requests sent, or the input generator failed
)

// startSchedule sets the first send: at a random time within the first
// interval, which spreads a fleet's sends (in a closed loop: now).
func (d *device) startSchedule() {
	d.interval = time.Duration(float64(time.Second) / d.run.opts.Rate)
	d.next = time.Now()
	if !d.run.opts.ClosedLoop {
		d.next = d.next.Add(time.Duration(d.rng.Int64N(int64(max(d.interval, 1)))))
	}
}

// trySend sends the device's next request if its time has come (its
// schedule, and no earlier than a 429's retry_after allows). It runs on
// one goroutine at a time per device (its sender).
func (d *device) trySend(now time.Time) (sendResult, time.Time) {
	o := d.run.opts
	if o.Requests > 0 && d.n >= o.Requests {
		return finished, time.Time{}
	}
	if d.input == nil {
		b, err := json.Marshal(d.gen())
		if err != nil { // a generator bug, not something a run can go on with
			o.Logger.Error("input generator made unencodable input", "device", d.id, "model", o.Model, "err", err)
			return finished, time.Time{}
		}
		d.input = b
	}
	// Decide and register under the lock, so that a 429 that arrives
	// concurrently either comes after this send or delays it.
	d.mu.Lock()
	at := d.next
	if d.notBefore.After(at) {
		at = d.notBefore
	}
	if o.ClosedLoop && len(d.pending) > 0 {
		at = now.Add(time.Hour) // until the reply wakes the device
	}
	if now.Before(at) {
		d.mu.Unlock()
		return notYet, at
	}
	d.seq++
	id := "r-" + strconv.FormatUint(d.seq, 10)
	body, _ := json.Marshal(api.Request{ID: id, Input: d.input}) // cannot fail: input is valid JSON
	req := &request{at: now, body: body}
	d.pending[id] = req
	if o.trace != nil {
		o.trace(traceEvent{Device: d.id, ID: id, At: now})
	}
	d.mu.Unlock()

	acked, err := d.client.publish(d.reqTopic, o.QoS, body)
	d.mu.Lock()
	req.acked = acked
	d.mu.Unlock()
	if err != nil {
		d.mu.Lock()
		delete(d.pending, id)
		d.mu.Unlock()
		d.run.publishErrors.Add(1)
		if errors.Is(err, errNotConnected) {
			return lostConnection, time.Time{}
		}
	} else {
		d.run.sent.Add(1)
		d.input = nil
		d.n++
	}
	d.next = d.next.Add(d.interval)
	if d.next.Before(now) { // more than an interval behind: do not burst to catch up
		d.next = now.Add(d.interval)
	}
	if o.ClosedLoop {
		d.next = now // the reply, not the clock, paces the device
	}
	return sentOne, time.Time{}
}

// errNotConnected is a publish on a connection that is gone.
var errNotConnected = errors.New("not connected")

// request is a request sent and not yet answered.
type request struct {
	at   time.Time
	body []byte
	// acked reports whether the broker acknowledged the publish (always
	// true at QoS 0 and on lean connections, which do not track acks).
	acked func() bool
}

// client is a device's MQTT connection: paho's, or a lean one.
type client interface {
	// publish sends without waiting for the broker's ack, and returns a
	// func that reports whether it has come; a failure that comes later
	// shows up as a lost request.
	publish(topic string, qos byte, payload []byte) (acked func() bool, err error)
	disconnect()
}

// pahoClient is a paho connection.
type pahoClient struct{ c mqtt.Client }

// publish hands the message to paho. A QoS 0 token completes when the
// message is handed to the writer, a QoS 1 token on PUBACK; neither is
// waited for, so that pacing does not depend on the broker's acks.
func (p pahoClient) publish(topic string, qos byte, payload []byte) (func() bool, error) {
	tok := p.c.Publish(topic, qos, false, payload)
	acked := func() bool {
		select {
		case <-tok.Done():
			return tok.Error() == nil
		default:
			return false
		}
	}
	select {
	case <-tok.Done():
		if err := tok.Error(); errors.Is(err, mqtt.ErrNotConnected) {
			return acked, errNotConnected
		} else if err != nil {
			return acked, err
		}
	default:
	}
	return acked, nil
}

func (p pahoClient) disconnect() { p.c.Disconnect(disconnectQuiesce) }

// leanClient is a lean connection.
type leanClient struct{ l *leanConn }

func (c leanClient) publish(topic string, qos byte, payload []byte) (func() bool, error) {
	if err := c.l.publish(topic, qos, payload); err != nil {
		return alwaysAcked, errNotConnected // a write that failed leaves the connection unusable
	}
	return alwaysAcked, nil
}

func alwaysAcked() bool { return true }

func (c leanClient) disconnect() { c.l.close() }

// onReply is the handler of the device's result subscription. It runs on
// paho's router goroutine (or the lean connection's reader) and never blocks.
func (d *device) onReply(payload []byte) {
	now := time.Now()
	var res api.Result
	if err := json.Unmarshal(payload, &res); err != nil || res.Status == 0 {
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
	req, ok := d.pending[res.ID]
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
	if retry > 0 || d.run.opts.ClosedLoop {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	if !ok {
		d.run.unmatched.Add(1)
		return
	}
	d.run.record(&res, now.Sub(req.at))
}

// outstanding is the number of requests sent and not answered.
func (d *device) outstanding() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}
