package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// DefaultMaxRequestSize is the request size limit of a Remote whose
// MaxRequestSize is 0, in bytes; the same as the embedded broker's.
const DefaultMaxRequestSize = 64 << 10

// DefaultQueueSize is the waiting-request bound of a Remote whose QueueSize is 0.
const DefaultQueueSize = 1024

// DefaultDrainTimeout is how long a Remote whose DrainTimeout is 0 lets the
// requests in flight finish at shutdown before it cancels their models.
const DefaultDrainTimeout = 30 * time.Second

const (
	// tokenTimeout bounds every wait for the broker (SUBACK, PUBACK,
	// UNSUBACK). A QoS 1 publish made while paho reconnects completes after
	// the reconnect, so this is generous.
	tokenTimeout = 30 * time.Second
	// quiesce is how long Disconnect may take to send DISCONNECT, in ms.
	quiesce = 1000
	// Paho's defaults (30 s between first-connect attempts, reconnect
	// back-off up to 10 min) leave a worker idle for minutes after a broker
	// restart; these keep it close behind the broker.
	connectRetryInterval = 2 * time.Second
	maxReconnectInterval = 30 * time.Second
	connectTimeout       = 10 * time.Second
	keepAlive            = 30 * time.Second
	// maxUnsubscribes caps the UNSUBSCRIBEs sent at shutdown (see unsubscribe).
	maxUnsubscribes = 4096
)

// RemoteOptions configure a Remote worker.
type RemoteOptions struct {
	// Broker is the broker URL: tcp://, ssl://, ws:// or wss://, e.g.
	// "tcp://127.0.0.1:1883". Required.
	Broker string
	// ClientID is the worker's MQTT client id; "" lets the broker assign one.
	ClientID string
	// Username and Password authenticate the worker to the broker, if it needs them.
	Username string
	Password string
	// Prefix is the service's topic prefix; "" means topics.DefaultPrefix.
	Prefix string
	// Group is the shared-subscription group the workers split requests in
	// (topics.SharedRequestFilter). Required; a valid id.
	Group string
	// Concurrency is the most inferences run at once; 0 or less means 1.
	Concurrency int
	// DedupTTL is how long the reply to a request with an id is remembered,
	// so that a redelivered copy (same topic, same id) is answered from the
	// cache instead of running the model again. 0 or less switches the cache
	// off (copies that arrive while the first one runs still wait for it).
	DedupTTL time.Duration
	// DedupSize bounds the remembered replies; 0 means DefaultDedupSize.
	DedupSize int
	// Throttle, when non-nil, throttles each device in the worker: for
	// brokers that are not mqttinfer's (whose hooks throttle already). Refused
	// requests get 429 with retry_after_ms, and every reply carries ratelimit.
	Throttle *throttle.Limiter
	// MaxRequestSize is the largest request body, in bytes; larger ones get
	// 413. 0 means DefaultMaxRequestSize.
	MaxRequestSize int
	// QueueSize bounds the requests waiting for a model (in their lanes);
	// past it new requests get 503 overloaded. 0 means DefaultQueueSize.
	QueueSize int
	// DrainTimeout bounds how long shutdown waits for running models before
	// canceling them (their requests are still answered, 503). 0 means
	// DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Node is this worker's node id, for its status topic. Required; a valid id.
	Node string
	// Version is the software version reported in the status message.
	Version string
	// Log receives the worker's logs; nil uses the Core's, or discards.
	Log *slog.Logger
}

// Remote is the remote worker transport: an MQTT client (MQTT 3.1.1, paho)
// that takes requests from any broker through a shared subscription, runs
// them through a Core and publishes the replies on the devices' result
// topics. Several Remotes in one Group split the requests between them.
//
// Identity: the broker delivers a request without the publisher's client id,
// so a Remote cannot check that a device publishes only under its own id. On
// mqttinfer's embedded broker the broker's hook has checked it (and
// validated and throttled the request) before the Remote sees it; on a
// foreign broker (Mosquitto, EMQX, HiveMQ) use that broker's ACLs to bind
// each client to its own request topics.
//
// Delivery: requests are taken at QoS 1 and acknowledged (PUBACK) only after
// their reply (for a stream, its final event) has been published and
// acknowledged by the broker, so a worker that dies mid-request does not
// acknowledge it. Redelivered copies are answered from a cache (see Dedup)
// rather than run twice.
//
// Order: a device's requests for one model run one after the other, in the
// order they arrived (a lane, as in Pool), so that stateful models (a
// telemetry series, an audio stream) see them in order; different devices
// and models run concurrently, up to Concurrency. With several workers in a
// group the broker spreads a device's requests over them, and only each
// worker's share is kept in order.
//
// Streams: a request that asks for a stream, on a model that streams, is
// answered with stream events, published in seq order at QoS 1. A request
// {"id": "x", "cancel": true} cancels the device's request x if it runs or
// waits on this worker (see cancelRequest for the limits within a group).
//
// Throttle: with RemoteOptions.Throttle the worker charges each request its
// model's cost (times the inputs of a v2 batch) and settles metered outputs
// to what they used.
type Remote struct {
	core   *Core
	opts   RemoteOptions
	log    *slog.Logger
	filter string
	dedup  *Dedup // nil when the cache is off and copies are not coalesced
	sem    chan struct{}

	willTopic   string
	willPayload []byte

	subscribed     chan struct{}
	subscribedOnce sync.Once
	fatal          chan error // buffered 1: the first unrecoverable error
	started        atomic.Bool
	waiting        atomic.Int64 // requests queued in a lane or waiting for an inference slot
	unacked        atomic.Int64 // QoS > 0 requests received and not yet acknowledged

	// workCtx is the context of the models; it outlives Run's context
	// until the drain timeout so that requests in flight finish.
	workCtx context.Context

	tasks tasks // requests not yet answered, and connect handlers running

	lmu     sync.Mutex             // guards lanes and running
	lanes   map[string]*remoteLane // by device and model: requests behind the one running
	running map[string]*delivery   // by device and request id: what a cancel cancels

	mu       sync.Mutex // orders the stopping flag against Subscribe
	stopping bool       // intake stopped: no (re)subscription
}

// NewRemote checks opts and returns a Remote ready to Run.
func NewRemote(core *Core, opts RemoteOptions) (*Remote, error) {
	if core == nil || core.Models == nil {
		return nil, errors.New("remote worker: a Core with models is required")
	}
	if err := checkBrokerURL(opts.Broker); err != nil {
		return nil, err
	}
	if opts.Prefix == "" {
		opts.Prefix = topics.DefaultPrefix
	}
	if err := topics.ValidPrefix(opts.Prefix); err != nil {
		return nil, fmt.Errorf("remote worker: %w", err)
	}
	if err := topics.ValidID(opts.Group); err != nil {
		return nil, fmt.Errorf("remote worker: shared-subscription group: %w", err)
	}
	if err := topics.ValidID(opts.Node); err != nil {
		return nil, fmt.Errorf("remote worker: node id (for the status topic): %w", err)
	}
	if opts.MaxRequestSize < 0 {
		return nil, fmt.Errorf("remote worker: max request size is %d bytes; it must be >= 0 (0 means %d)", opts.MaxRequestSize, DefaultMaxRequestSize)
	}
	if opts.MaxRequestSize == 0 {
		opts.MaxRequestSize = DefaultMaxRequestSize
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	log := opts.Log
	if log == nil {
		log = core.log()
	}
	r := &Remote{
		core:       core,
		opts:       opts,
		log:        log.With("component", "remote-worker"),
		filter:     topics.SharedRequestFilter(opts.Group, opts.Prefix),
		sem:        make(chan struct{}, max(opts.Concurrency, 1)),
		subscribed: make(chan struct{}),
		fatal:      make(chan error, 1),
		lanes:      make(map[string]*remoteLane),
		running:    make(map[string]*delivery),
	}
	r.dedup = NewDedup(opts.DedupTTL, opts.DedupSize, nil)
	// Paho takes one will. It goes on the latest version's status topic
	// (topics.Latest); the older versions' status topics keep "online" after
	// a crash until the worker reconnects or is shut down cleanly. Its
	// "since" is the start of the process: a will cannot be dated later.
	offline, err := r.statusMessages("offline")
	if err != nil {
		return nil, err
	}
	r.willTopic = topics.Status(opts.Prefix, topics.Latest(), opts.Node)
	for _, a := range offline {
		if a.Topic == r.willTopic {
			r.willPayload = a.Payload
		}
	}
	return r, nil
}

func checkBrokerURL(s string) error {
	u, err := url.Parse(s)
	if err == nil {
		switch u.Scheme {
		case "tcp", "mqtt", "ssl", "tls", "mqtts", "tcps", "ws", "wss":
			if u.Host != "" {
				return nil
			}
		}
	}
	return fmt.Errorf("remote worker: broker URL %q: want scheme://host:port with scheme tcp, ssl, ws or wss, e.g. tcp://127.0.0.1:1883", s)
}

// Subscribed is closed once the broker has acknowledged the worker's first
// subscription to the requests (after the catalog and the online status are
// published): from then on the worker takes requests.
func (r *Remote) Subscribed() <-chan struct{} { return r.subscribed }

// Run connects (retrying until the broker is there), subscribes and serves
// until ctx is done, then shuts down gracefully: it stops intake
// (unsubscribes), lets the requests in flight finish and publishes their
// replies (after DrainTimeout their models are canceled and they are
// answered 503), publishes the offline status and disconnects. It returns
// nil after a clean shutdown, or the error that made the worker stop (the
// broker refused its subscription). Run may be called once.
func (r *Remote) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("remote worker: Run called twice")
	}
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	r.workCtx = workCtx // before Connect: every handler starts after it

	c := mqtt.NewClient(r.clientOptions())
	r.log.Info("connecting", "broker", r.opts.Broker, "client_id", r.opts.ClientID, "filter", r.filter)
	connected := c.Connect()

	var err error
	select {
	case <-ctx.Done():
	case err = <-r.fatal:
	case <-connected.Done():
		// With ConnectRetry the token completes only on success or Disconnect.
		if cerr := connected.Error(); cerr != nil {
			err = fmt.Errorf("remote worker: connect to %s: %w", r.opts.Broker, cerr)
			break
		}
		select {
		case <-ctx.Done():
		case err = <-r.fatal:
		}
	}
	r.shutdown(c, cancelWork)
	// A connect still retrying ends at its next attempt; wait for it so no
	// goroutine of the client outlives Run.
	<-connected.Done()
	return err
}

// shutdown stops intake, drains the requests in flight, announces the node
// offline and disconnects.
func (r *Remote) shutdown(c mqtt.Client, cancelWork context.CancelFunc) {
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
	if c.IsConnectionOpen() {
		r.unsubscribe(c)
	}
	r.log.Info("shutting down: intake stopped, finishing the requests in flight", "in_flight", r.tasks.count())

	drain := time.NewTimer(r.opts.DrainTimeout)
	defer drain.Stop()
	canceled := false
	for {
		idle := r.tasks.idle()
		if canceled {
			<-idle
		} else {
			select {
			case <-idle:
			case <-drain.C:
				r.log.Warn("drain timeout: canceling the models still running; their requests are answered 503",
					"timeout", r.opts.DrainTimeout, "in_flight", r.tasks.count())
				canceled = true
				cancelWork()
				<-idle
			}
		}
		if c.IsConnectionOpen() {
			r.announce(c, "offline")
		}
		// A request the broker sent just before its UNSUBACK may reach
		// its handler only now (paho starts a goroutine per message): it
		// is answered too, and the offline status published after it.
		if r.tasks.closeIfIdle() {
			break
		}
	}
	r.core.Metrics.WorkerUp("remote", false)
	c.Disconnect(quiesce)
	r.log.Info("disconnected", "broker", r.opts.Broker)
}

// unsubscribe stops intake. mochi (the embedded broker) ignores an
// UNSUBSCRIBE whose packet id equals the id of one of its own messages in
// flight to this client, and MQTT 3.1.1's UNSUBACK cannot say so. Requests
// are acknowledged only once answered, so at shutdown under load many are
// in flight, and paho's ids, which advance with every reply, run right into
// them. So the UNSUBSCRIBE is sent under more distinct packet ids than there
// are requests in flight (with room for a few arriving meanwhile): at least
// one of them is free. The extra ones are harmless no-ops on any broker.
func (r *Remote) unsubscribe(c mqtt.Client) {
	n := min(2*r.unacked.Load()+2, maxUnsubscribes)
	toks := make([]mqtt.Token, n)
	for i := range toks {
		toks[i] = c.Unsubscribe(r.filter)
	}
	for _, tok := range toks {
		if err := wait(tok); err != nil {
			r.log.Warn("unsubscribe at shutdown", "filter", r.filter, "error", err)
			return
		}
	}
}

func (r *Remote) clientOptions() *mqtt.ClientOptions {
	o := mqtt.NewClientOptions().
		AddBroker(r.opts.Broker).
		SetClientID(r.opts.ClientID).
		// A clean session: mochi (and other brokers) keep choosing an
		// offline shared-subscription member with a persistent session and
		// queue its share until it returns; with a clean session an offline
		// worker is no member at all. The cost: QoS 1 requests delivered
		// but not yet acknowledged when the connection drops are not
		// redelivered to this worker; whether the broker re-sends them to
		// another member is up to the broker.
		SetCleanSession(true).
		// Ordered: paho calls onMessage for one message after the other,
		// in arrival order, which lanes and cancels need. Ordered delivery
		// with a handler that waits on publish tokens nearly deadlocks
		// paho; onMessage never blocks and never calls into paho, it only
		// queues the request for a goroutine of its own (bounded by r.sem,
		// and by the broker's in-flight window, since requests are
		// acknowledged only after their reply).
		SetOrderMatters(true).
		SetAutoAckDisabled(true).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(connectRetryInterval).
		SetMaxReconnectInterval(maxReconnectInterval).
		SetConnectTimeout(connectTimeout).
		SetKeepAlive(keepAlive).
		SetBinaryWill(r.willTopic, r.willPayload, 1, true).
		SetStore(copyingStore{mqtt.NewMemoryStore()}).
		SetOnConnectHandler(r.onConnect).
		SetConnectionLostHandler(r.onConnectionLost).
		SetConnectionNotificationHandler(r.onNotification).
		// Unsubscribing from a $share filter leaves paho's route in place,
		// but should a request ever arrive without a matching route it is
		// still handled, not left unacknowledged.
		SetDefaultPublishHandler(r.onMessage)
	if r.opts.Username != "" {
		o.SetUsername(r.opts.Username)
	}
	if r.opts.Password != "" {
		o.SetPassword(r.opts.Password)
	}
	return o
}

// onConnect runs (in its own goroutine) after every connect and reconnect:
// with a clean session the broker has forgotten the subscription, so it
// announces the node and subscribes again.
func (r *Remote) onConnect(c mqtt.Client) {
	if !r.tasks.enter() {
		return
	}
	defer r.tasks.leave()
	r.mu.Lock()
	stopping := r.stopping
	r.mu.Unlock()
	if stopping {
		return
	}
	r.log.Info("connected", "broker", r.opts.Broker)
	r.announce(c, "online")

	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return
	}
	// Subscribe queues the SUBSCRIBE before it returns, and shutdown's
	// UNSUBSCRIBE is queued only after stopping is set under r.mu, so the
	// broker never sees them in the other order.
	tok := c.Subscribe(r.filter, 1, r.onMessage)
	r.mu.Unlock()
	if !tok.WaitTimeout(tokenTimeout) {
		r.fail(fmt.Errorf("remote worker: broker %s did not acknowledge the subscription to %s within %s", r.opts.Broker, r.filter, tokenTimeout))
		return
	}
	if err := tok.Error(); err != nil {
		// The connection went down meanwhile; the next connect subscribes.
		r.log.Warn("subscribe failed", "filter", r.filter, "error", err)
		return
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code >= 0x80 {
				r.fail(fmt.Errorf("remote worker: broker %s refused the subscription to %s (SUBACK 0x%02x): check the worker's credentials and the broker's ACL, and that it supports shared subscriptions",
					r.opts.Broker, r.filter, code))
				return
			}
		}
	}
	r.core.Metrics.WorkerUp("remote", true)
	r.subscribedOnce.Do(func() { close(r.subscribed) })
	r.log.Info("taking requests", "filter", r.filter, "concurrency", cap(r.sem))
}

func (r *Remote) onConnectionLost(_ mqtt.Client, err error) {
	r.core.Metrics.WorkerUp("remote", false)
	r.log.Warn("connection to the broker lost; reconnecting", "broker", r.opts.Broker, "error", err)
}

func (r *Remote) onNotification(_ mqtt.Client, n mqtt.ConnectionNotification) {
	if f, ok := n.(mqtt.ConnectionNotificationFailed); ok {
		r.log.Warn("cannot connect to the broker; retrying", "broker", r.opts.Broker, "error", f.Reason)
	}
}

// fail records an unrecoverable error for Run, which then shuts down.
func (r *Remote) fail(err error) {
	r.log.Error("stopping", "error", err)
	select {
	case r.fatal <- err:
	default:
	}
}

func (r *Remote) statusMessages(state string) ([]Announcement, error) {
	return StatusMessages(r.opts.Prefix, Status{
		Node:       r.opts.Node,
		State:      state,
		Version:    r.opts.Version,
		Transport:  "remote",
		Models:     r.core.Models.Names(),
		QueueDepth: int(r.waiting.Load()),
	})
}

// announce publishes the retained status (and, when online, the catalog)
// on every version's topics.
func (r *Remote) announce(c mqtt.Client, state string) {
	msgs, err := r.statusMessages(state)
	if err == nil && state == "online" {
		var cat []Announcement
		cat, err = Catalog(r.opts.Prefix, r.core.Models)
		msgs = append(cat, msgs...)
	}
	if err != nil {
		r.log.Error("encode announcements", "error", err)
		return
	}
	for _, a := range msgs {
		if err := wait(c.Publish(a.Topic, 1, true, a.Payload)); err != nil {
			r.log.Warn("publish announcement", "topic", a.Topic, "error", err)
		}
	}
}

// wait waits, at most tokenTimeout, for the broker to complete tok.
func wait(tok mqtt.Token) error {
	if !tok.WaitTimeout(tokenTimeout) {
		return fmt.Errorf("no acknowledgement from the broker within %s", tokenTimeout)
	}
	return tok.Error()
}

// delivery is one request message as it arrived, and what the intake made
// of it.
type delivery struct {
	c        mqtt.Client
	msg      mqtt.Message
	topic    topics.Topic
	received time.Time
	ack      func() // acknowledges msg (once)

	body      api.Request
	generated bool       // body.ID was made up here: a copy cannot be told from a new request
	reject    *api.Error // the answer, when the request cannot be run

	// Set by admit when the worker throttles.
	rl       *api.RateLimit // for the reply
	admitted bool           // charged cost tokens and an in-flight slot
	cost     int

	// ctx is the request's context, canceled with errCanceledByDevice by
	// a cancel request; a child of the Remote's workCtx.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// copies are copies of this request (same topic and id) that arrived
	// before it was answered; they get its final reply. Guarded by lmu.
	copies []*delivery
}

func (d *delivery) dedupKey() DedupKey {
	return DedupKey{Version: d.topic.Version, Device: d.topic.Device, Model: d.topic.Model, ID: d.body.ID}
}

// onMessage is the intake of every request message. Paho calls it in the
// order the messages arrive (OrderMatters(true)), on its one routing
// goroutine, so it must not block nor call into paho (not even Ack): it
// decodes the request, acts on a cancel at once, and queues everything
// else in its lane, which a goroutine of its own runs (see enqueue).
// Deciding here, in arrival order, is what keeps a device's requests in
// order and lets a cancel overtake the request it cancels.
func (r *Remote) onMessage(c mqtt.Client, msg mqtt.Message) {
	if !r.tasks.enter() {
		// Shutdown has drained and is disconnecting: the message stays
		// unacknowledged, which is all that can be done for it now.
		r.log.Warn("request arrived after shutdown; left unacknowledged", "topic", msg.Topic())
		return
	}
	d := &delivery{c: c, msg: msg, received: time.Now()}
	if msg.Qos() > 0 {
		r.unacked.Add(1)
		d.ack = sync.OnceFunc(func() {
			msg.Ack()
			r.unacked.Add(-1)
		})
	} else {
		d.ack = func() {}
	}
	t, err := topics.Parse(r.opts.Prefix, msg.Topic())
	d.topic = t
	if t.Kind != topics.KindRequest || (err != nil && !errors.Is(err, topics.ErrUnsupportedVersion)) {
		r.core.Metrics.Rejected("bad_topic")
		r.log.Warn("message on a malformed request topic dropped: there is no topic to answer on", "topic", msg.Topic(), "error", err)
		go func() {
			defer r.tasks.leave()
			d.ack()
		}()
		return
	}
	payload := msg.Payload()
	switch {
	case err != nil:
		d.body.ID = api.PeekID(payload)
		d.reject = api.Errorf(api.UnsupportedVersion, "API version %q is not supported", t.Version)
		d.reject.Versions = topics.Versions()
	case len(payload) > r.opts.MaxRequestSize:
		d.body.ID = api.PeekID(payload)
		d.reject = api.Errorf(api.PayloadTooLarge, "request is %d bytes, the limit is %d", len(payload), r.opts.MaxRequestSize)
	default:
		// MQTT 3.1.1 has no content type: bodies are JSON on every version.
		d.body, d.reject = api.Decode(t.Version, payload, "")
		switch {
		case d.reject != nil:
		case d.body.Cancel && d.body.ID == "":
			d.reject = api.Errorf(api.InvalidRequest, "field \"id\": a cancel must name the request to cancel")
		case d.body.Cancel:
			r.cancelRequest(d)
			return
		case d.body.ID == "":
			d.body.ID = api.NewID()
			d.generated = true
		}
	}
	r.enqueue(d)
}

// handle answers one request in its lane: exactly one reply (or one stream
// of events) is published, and the message is acknowledged once the final
// reply is out. It returns the final reply, for the copies that waited.
// A request refused at intake never gets here (see enqueue).
func (r *Remote) handle(d *delivery) (reply []byte) {
	defer r.unregister(d)
	defer r.done(d)
	if d.generated {
		reply, _ = r.answer(d)
		return reply
	}
	// Copies that arrive while the request waits or runs wait for it in
	// its lane (enqueue), so Begin finds at most a finished copy here
	// and does not wait.
	k := d.dedupKey()
	cached, dup, err := r.dedup.Begin(r.workCtx, k)
	if dup {
		// Charged at intake, before it was known to be a copy; refunded
		// before the reply goes out, like a settlement.
		r.refund(d)
		switch {
		case err != nil:
			r.log.Warn("duplicate request left unanswered: the worker stopped before the first copy finished", "topic", d.msg.Topic(), "id", d.body.ID)
		case cached == nil:
			r.log.Warn("duplicate request left unanswered: the first copy has no reply", "topic", d.msg.Topic(), "id", d.body.ID)
		default:
			r.core.Metrics.Duplicate()
			r.log.Debug("duplicate request answered from the cache", "topic", d.msg.Topic(), "id", d.body.ID)
			r.send(d, cached)
		}
		return cached
	}
	reply, keep := r.answer(d)
	r.dedup.Finish(k, reply, keep)
	return reply
}

// answer runs a decoded request, admitted by the throttle at intake, and
// publishes its reply (or its stream events). It returns the final reply
// (the result, or the final stream event) and whether it is the request's
// final answer, worth answering redelivered copies with.
func (r *Remote) answer(d *delivery) (reply []byte, keep bool) {
	t := d.topic
	job := Job{Version: t.Version, Device: t.Device, Model: t.Model, Request: d.body, Received: d.received, RateLimit: d.rl}
	if _, ok := r.core.Models.Get(t.Model); !ok || canceledByDevice(d.ctx) {
		return r.answerUnrun(d, job)
	}
	release, ok := r.acquire(d.ctx)
	if ok && canceledByDevice(d.ctx) {
		release()
		return r.answerUnrun(d, job)
	}
	if !ok {
		r.refund(d)
		res := api.ErrorResult(d.body.ID, t.Model, api.Errorf(api.Overloaded, "the worker is shutting down; retry on another"))
		res.RateLimit = job.RateLimit
		reply = r.encode(t, res)
		r.send(d, reply)
		return reply, false
	}
	r.core.Metrics.QueueWait(time.Since(d.received).Seconds())
	r.core.Metrics.Busy(1)
	reply, status, share := r.run(d, job)
	r.core.Metrics.Busy(-1)
	release()
	// Settled before the final reply goes out, so that the device's next
	// request sees the tokens given back.
	if d.admitted && share >= 0 {
		r.opts.Throttle.Settle(t.Device, d.cost, share)
	}
	r.send(d, reply)
	return reply, final(status)
}

// answerUnrun answers a request for an unknown model, or one its device
// canceled before it ran: the Core answers 404, or 499, without running any
// model. Like the embedded broker's, neither costs tokens (an unknown model
// was not charged; a canceled request is refunded).
func (r *Remote) answerUnrun(d *delivery, job Job) (reply []byte, keep bool) {
	r.refund(d)
	if l := r.opts.Throttle; l != nil {
		job.RateLimit = pipeline.RateLimit(l.Peek(d.topic.Device, d.topic.Model))
	}
	reply, status, _ := r.run(d, job)
	r.send(d, reply)
	return reply, final(status)
}

// admit charges a request to its device's bucket at intake (when the
// worker throttles), in arrival order, before it queues: a device over its
// rate is refused at once rather than after the requests queued before,
// and its in-flight limit bounds how many it has queued. A v2 batch costs
// the model's cost per input; one costlier than the bucket can ever hold is
// refused 413. Unknown models cost nothing (the Core answers 404).
func (r *Remote) admit(d *delivery) {
	l := r.opts.Throttle
	if l == nil {
		return
	}
	t := d.topic
	if _, ok := r.core.Models.Get(t.Model); !ok {
		return
	}
	dec := l.AllowN(t.Device, t.Model, len(d.body.Inputs))
	d.rl = pipeline.RateLimit(dec)
	switch {
	case dec.Allowed:
		d.admitted, d.cost = true, dec.Cost
	case dec.Reason == throttle.ReasonTooLarge:
		d.reject = api.Errorf(api.PayloadTooLarge, "%s", dec.Describe(t.Device))
	default:
		r.core.Metrics.Throttled(string(dec.Reason))
		d.reject = api.Errorf(api.RateLimited, "%s", dec.Describe(t.Device))
		d.reject.RetryAfterMS = max(dec.RetryAfterMillis(), 1)
	}
}

// refund gives an admitted request's tokens back: it ran no model.
func (r *Remote) refund(d *delivery) {
	if d.admitted {
		r.opts.Throttle.Refund(d.topic.Device, d.cost)
		d.cost = 0
	}
}

// done gives back an admitted request's in-flight slot, once its reply is out.
func (r *Remote) done(d *delivery) {
	if d.admitted {
		r.opts.Throttle.Done(d.topic.Device)
		d.admitted = false
	}
}

// run runs a job on the Core: as a stream when it asks for one and its
// model streams (the deltas are published as they come), else as one
// result. It returns the encoded final reply, which it does not publish,
// its status, and the share of the up-front cost a metered output used (or
// -1).
func (r *Remote) run(d *delivery, job Job) (reply []byte, status int, share float64) {
	if r.core.Streams(job) {
		return r.stream(d, job)
	}
	res, share := r.core.Do(d.ctx, job)
	return r.encode(d.topic, res), res.Status, share
}

// final reports whether a reply is the request's final answer. Transient
// outcomes (a deadline missed while waiting, throttling, a failed or
// overloaded worker, a canceled request) are not remembered: the device
// retries them with the same id and must get a fresh attempt.
func final(status int) bool {
	switch {
	case status >= 500, status == api.DeadlineExceeded.Status(), status == api.RateLimited.Status(), status == api.Canceled.Status():
		return false
	}
	return true
}

// acquire takes an inference slot. It returns the function that gives the
// slot back, or false when the models were canceled at shutdown while it
// waited. A request its device cancels while it waits returns at once,
// without a slot (a no-op release), for answerUnrun.
func (r *Remote) acquire(ctx context.Context) (release func(), ok bool) {
	r.waiting.Add(1)
	defer r.waiting.Add(-1)
	select {
	case r.sem <- struct{}{}:
		return func() { <-r.sem }, true
	case <-ctx.Done():
		if canceledByDevice(ctx) && r.workCtx.Err() == nil {
			return func() {}, true
		}
		return nil, false
	}
}

func canceledByDevice(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errCanceledByDevice)
}

// reject answers a request that failed before it could be run, and
// returns the reply.
func (r *Remote) reject(d *delivery, id string, e *api.Error) []byte {
	res := api.ErrorResult(id, d.topic.Model, e)
	res.RateLimit = d.rl
	if l := r.opts.Throttle; l != nil && res.RateLimit == nil {
		res.RateLimit = pipeline.RateLimit(l.Peek(d.topic.Device, d.topic.Model))
	}
	reply := r.encode(d.topic, res)
	r.send(d, reply)
	return reply
}

// encode counts a reply and encodes it for the request's API version; nil
// when it cannot be encoded (logged).
func (r *Remote) encode(t topics.Topic, res api.Result) []byte {
	return r.encodeFinal(t, res.ID, res.Status, res)
}

// encodeFinal counts a final reply (a result, or a final stream event v)
// and encodes it; nil when it cannot be encoded (logged).
func (r *Remote) encodeFinal(t topics.Topic, id string, status int, v any) []byte {
	r.core.Metrics.Request(t.Version, t.Model, status)
	b, err := api.Marshal(t.Version, v)
	if err != nil {
		r.log.Error("encode reply", "topic", t.String(), "id", id, "error", err)
		return nil
	}
	return b
}

// send publishes a final reply and, once the broker has acknowledged it,
// acknowledges the request. A reply that cannot be published is counted
// and logged, and the request is left unacknowledged, for the broker to
// redeliver if its session allows.
func (r *Remote) send(d *delivery, reply []byte) {
	if reply == nil {
		return
	}
	// The reply is published now, in order with the lane's other replies
	// (paho writes a client's publishes in the order they are made), and
	// acknowledged once the broker has it, without holding up the lane:
	// waiting for each PUBACK here would cap a device at one round trip
	// per request. The wait holds a task, so shutdown waits for it.
	topic := d.topic.ResultTopic()
	tok := d.c.Publish(topic, 1, false, reply)
	r.tasks.hold()
	go func() {
		defer r.tasks.leave()
		if err := wait(tok); err != nil {
			r.core.Metrics.Dropped()
			r.log.Warn("publish reply", "topic", topic, "error", err)
			return
		}
		d.ack()
	}()
}

// publish publishes a payload on the request's result topic at QoS 1 and
// waits for the broker's acknowledgement. A failure is counted and logged.
func (r *Remote) publish(d *delivery, payload []byte) error {
	topic := d.topic.ResultTopic()
	if err := wait(d.c.Publish(topic, 1, false, payload)); err != nil {
		r.core.Metrics.Dropped()
		r.log.Warn("publish reply", "topic", topic, "error", err)
		return err
	}
	return nil
}

// copyingStore is paho's memory store, keeping a copy of each PUBLISH
// instead of the packet being sent. After a reconnect paho resends the
// stored publishes and sets their DUP flag in place, while publishes made
// meanwhile (announcements from the connect handler, replies) are being
// written by the new connection: a data race on the very packet. With a
// copy in the store, resume marks the copy.
type copyingStore struct{ mqtt.Store }

func (s copyingStore) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok {
		c := *p
		m = &c
	}
	s.Store.Put(key, m)
}

// tasks counts the handlers running so that shutdown can wait for them
// without racing new ones: paho starts a goroutine per message, so a
// sync.WaitGroup's Add could run concurrently with its Wait.
type tasks struct {
	mu     sync.Mutex
	n      int
	closed bool
	zero   chan struct{} // closed while n == 0; nil until the first task
}

// enter registers a task; false once the tracker is closed.
func (t *tasks) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.n == 0 {
		t.zero = make(chan struct{})
	}
	t.n++
	return true
}

// hold registers one more task from inside a running one, so the tracker
// cannot have been closed.
func (t *tasks) hold() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n++
}

func (t *tasks) leave() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 {
		close(t.zero)
	}
}

// idle returns a channel closed when no task runs (at the time of the call
// or later).
func (t *tasks) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return t.zero
}

func (t *tasks) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// closeIfIdle closes the tracker if no task runs, and reports whether it did.
func (t *tasks) closeIfIdle() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		t.closed = true
	}
	return t.closed
}
