package worker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Defaults of RemoteOptions.
const (
	// DefaultMaxRequestSize is the request size limit of a Remote whose
	// MaxRequestSize is 0, in bytes; the same as the embedded broker's.
	DefaultMaxRequestSize = pipeline.DefaultMaxSize
	// DefaultQueueSize bounds the requests waiting for a model.
	DefaultQueueSize = 1024
	// DefaultDrainTimeout is how long a leaving worker lets the requests in
	// flight finish before it cancels their models.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultKeepAlive is the MQTT keep-alive of a worker's connection: a
	// worker that vanishes without closing its connection (power loss, a
	// network partition) is known gone after 1.5 times this.
	DefaultKeepAlive = 5 * time.Second
	// DefaultHeartbeat is how often a worker republishes its status.
	DefaultHeartbeat = 5 * time.Second
	// maxHeld bounds the copies of requests a worker holds for the other
	// workers' partitions.
	maxHeld = 100000
	// reconnect back-off bounds.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// errNodeConflict ends a worker whose node id another live worker uses.
var errNodeConflict = errors.New("another live worker of the group uses this node id: give each worker its own --node")

// RemoteOptions configure a Remote worker.
type RemoteOptions struct {
	// Broker is the broker URL (see mqttclient.ParseURL), e.g.
	// "tcp://127.0.0.1:1883", or several, comma-separated: the worker
	// connects to the first that answers, and to the next when it loses
	// it. Required.
	Broker string
	// MQTTVersion is the protocol; 0 means MQTT 5. With 3.1.1 the worker
	// cannot see nor send MQTT 5 properties (response topics, CBOR).
	MQTTVersion mqttclient.Version
	// TLS configures ssl:// and wss:// brokers (a private CA, a client
	// certificate); nil uses the system's roots.
	TLS *tls.Config
	// ClientID is the worker's MQTT client id; "" means
	// "<node>-<random>".
	ClientID string
	// Username and Password authenticate the worker to the broker, if it needs them.
	Username string
	Password string
	// Prefix is the service's topic prefix; "" means topics.DefaultPrefix.
	Prefix string
	// Group names the workers that share the devices between them: each
	// device is served by one live worker of the group at a time. Required;
	// a valid id.
	Group string
	// Node is this worker's node id: its status topic, and its identity in
	// the group (which partitions it desires). Unique in the group.
	// Required; a valid id.
	Node string
	// Version is the software version reported in the status message.
	Version string
	// Concurrency is the most inferences run at once; 0 or less means 1.
	Concurrency int
	// QueueSize bounds the requests waiting for a model; past it new
	// requests get 503 overloaded. 0 means DefaultQueueSize.
	QueueSize int
	// DedupTTL is how long the reply to a request is remembered, so that a
	// copy of it (same topic, id and body: a device's retry) is answered
	// from the cache instead of running the model again. 0 switches the
	// cache off. DedupSize bounds it (0: DefaultReplyCacheSize).
	DedupTTL  time.Duration
	DedupSize int
	// Throttle, when non-nil, throttles each device in the worker: for
	// brokers that are not mqttinfer's (whose hooks throttle already).
	Throttle *throttle.Limiter
	// MaxRequestSize is the largest request body, in bytes; larger ones get
	// 413. 0 means DefaultMaxRequestSize.
	// CatalogChanged delivers a value when the models changed (a model
	// repository's reload): the worker publishes its retained catalog
	// again. nil: the models never change.
	CatalogChanged <-chan struct{}
	MaxRequestSize int
	// DrainTimeout bounds how long shutdown waits for running models
	// before canceling them (their requests are still answered, 503). 0
	// means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// KeepAlive is the connection's MQTT keep-alive (DefaultKeepAlive).
	KeepAlive time.Duration
	// Heartbeat is how often the status is republished (DefaultHeartbeat);
	// a member of the group silent for six heartbeats is gone.
	Heartbeat time.Duration
	// Log receives the worker's logs; nil uses the Core's, or discards.
	Log *slog.Logger
}

// Remote is the remote worker transport: an MQTT client of any broker
// (Mosquitto, EMQX, HiveMQ, or mqttinfer's own) that serves a share of the
// devices, with the same contract as the embedded node.
//
// Device affinity: every worker of a Group subscribes to every request;
// the devices are spread over Partitions partitions, and the workers agree
// which of them serves each partition (see group), so a device's requests
// are served by one worker at a time: its throttle bucket, its in-flight
// count, its models' state (a telemetry series, an audio stream) and the
// order of its requests are exact.
//
// Nothing lost: the other workers hold a copy of each request until they
// see its answer (its reply on the result topic, or the sent record of a
// reply that went to an MQTT 5 response topic). When a worker dies, the
// next owners of its partitions run the copies it left unanswered, in
// order, with the devices' state started afresh. A stream cut off midway
// ends with a 503 error event rather than starting over.
//
// Each connection is a new incarnation in the group, with a clean session:
// a worker whose connection drops gives up its partitions and joins again.
type Remote struct {
	core    *Core
	opts    RemoteOptions
	log     *slog.Logger
	adm     *pipeline.Admission
	pool    *Pool
	replies *replyCache

	started atomic.Bool

	mu   sync.Mutex
	cur  *session        // the connected session, nil between connections
	incs map[string]bool // the incarnations of this process
}

// NewRemote checks opts and returns a Remote ready to Run.
func NewRemote(core *Core, opts RemoteOptions) (*Remote, error) {
	if core == nil || core.Models == nil {
		return nil, errors.New("remote worker: a Core with models is required")
	}
	urls := brokerList(opts.Broker)
	if len(urls) == 0 {
		return nil, errors.New("remote worker: no broker URL")
	}
	for _, u := range urls {
		if _, err := mqttclient.ParseURL(u); err != nil {
			return nil, fmt.Errorf("remote worker: %w", err)
		}
	}
	if opts.Prefix == "" {
		opts.Prefix = topics.DefaultPrefix
	}
	if err := topics.ValidPrefix(opts.Prefix); err != nil {
		return nil, fmt.Errorf("remote worker: %w", err)
	}
	if err := topics.ValidID(opts.Group); err != nil {
		return nil, fmt.Errorf("remote worker: group: %w", err)
	}
	if err := topics.ValidID(opts.Node); err != nil {
		return nil, fmt.Errorf("remote worker: node id (for the status topic): %w", err)
	}
	if opts.MaxRequestSize < 0 {
		return nil, fmt.Errorf("remote worker: max request size is %d bytes; it must be >= 0 (0 means %d)", opts.MaxRequestSize, DefaultMaxRequestSize)
	}
	if opts.ClientID == "" {
		opts.ClientID = opts.Node + "-" + randomHex(4)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	log := opts.Log
	if log == nil {
		log = core.log()
	}
	return &Remote{
		core: core,
		opts: opts,
		log:  log.With("component", "remote-worker"),
		adm: &pipeline.Admission{
			MaxSize:  opts.MaxRequestSize,
			Limit:    core.Models.MaxRequestSize,
			HasModel: core.Models.Has,
			Models:   core.Models.Names,
			Throttle: opts.Throttle,
			Metrics:  core.Metrics,
		},
		pool:    NewPool(core, max(opts.Concurrency, 1), opts.QueueSize),
		replies: newReplyCache(opts.DedupTTL, opts.DedupSize),
	}, nil
}

// Run connects (retrying until the broker is there), joins the group and
// serves until ctx is done, then leaves gracefully: it hands its partitions
// over one by one as their running requests finish (after DrainTimeout
// their models are canceled and they are answered 503), publishes the
// offline status and disconnects. A lost connection is followed by a new
// one, as a new incarnation. Run returns nil after a clean shutdown, or
// the error that made the worker stop. Run may be called once.
func (r *Remote) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("remote worker: Run called twice")
	}
	r.pool.Start(nil)
	defer r.stopPool(0)
	backoff := minBackoff
	urls := brokerList(r.opts.Broker)
	for at := 0; ctx.Err() == nil; at = (at + 1) % len(urls) {
		s := newSession(r)
		s.url = urls[at]
		if err := s.connect(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			if at+1 < len(urls) {
				r.log.Warn("cannot connect to the broker; trying the next", "broker", s.url, "error", err)
				continue
			}
			r.log.Warn("cannot connect to the broker; retrying", "broker", s.url, "in", backoff, "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		err := s.run(ctx)
		switch {
		case errors.Is(err, errNodeConflict):
			return fmt.Errorf("remote worker %s: %w", r.opts.Node, err)
		case ctx.Err() != nil:
			return nil
		}
		r.log.Warn("connection lost: rejoining the group with a new connection", "error", err)
	}
	return nil
}

// stopPool stops the pool, canceling running models after grace.
func (r *Remote) stopPool(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	_ = r.pool.Stop(ctx)
}

// Ready reports whether the worker is connected and serves its share of a
// settled group: every partition is claimed by some member.
func (r *Remote) Ready(context.Context) error {
	s := r.session()
	if s == nil {
		return fmt.Errorf("not connected to %s", r.opts.Broker)
	}
	return s.readiness()
}

// Serves reports whether this worker serves device now.
func (r *Remote) Serves(device string) bool {
	s := r.session()
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving.has(Partition(device))
}

// Serving is the number of partitions this worker serves now.
func (r *Remote) Serving() int {
	s := r.session()
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving.len()
}

func (r *Remote) session() *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *Remote) setSession(s *session) {
	r.mu.Lock()
	r.cur = s
	if s != nil {
		if r.incs == nil {
			r.incs = map[string]bool{}
		}
		r.incs[s.inc] = true
	}
	r.mu.Unlock()
}

// ours reports whether inc is one of this process's incarnations.
func (r *Remote) ours(inc string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.incs[inc]
}

// session is one connection of a Remote: an incarnation in its group.
type session struct {
	r       *Remote
	inc     string
	started time.Time
	conn    *mqttclient.Conn
	url     string // the broker it is connected to
	events  chan mqttclient.Message
	wake    chan struct{} // a partition's last running request finished

	g          *group // owned by the loop
	held       *standby
	dirty      bool      // the status changed and is not published yet
	dirtySince time.Time // since when
	probed     bool      // the joining probe came back: the status may be published
	conflict   string    // the incarnation of another live worker with this node id

	mu       sync.Mutex
	inflight [Partitions]int // requests handed to the pool and not finished
	// Copies of the loop's state for other goroutines.
	ready   error   // for Ready
	serving partSet // the partitions served
	taking  bool    // has served a partition (logged once)
}

func newSession(r *Remote) *session {
	s := &session{
		r:       r,
		inc:     randomHex(6),
		started: time.Now(),
		events:  make(chan mqttclient.Message, 4096),
		wake:    make(chan struct{}, 1),
		held:    newStandby(maxHeld, r.core.maxDeadline()+5*time.Second),
		ready:   errors.New("joining the group"),
	}
	s.g = newGroup(r.opts.Node, s.inc, 6*r.opts.Heartbeat, s.busy)
	return s
}

// connect dials the broker with the offline status as the will.
func (s *session) connect(ctx context.Context) error {
	o := s.r.opts
	will, err := s.statusMessages("offline")
	if err != nil {
		return err
	}
	w := will[len(will)-1] // the latest version's; MQTT takes one will
	s.conn, err = mqttclient.Dial(ctx, mqttclient.Options{
		URL:       s.url,
		ClientID:  o.ClientID,
		Username:  o.Username,
		Password:  o.Password,
		TLS:       o.TLS,
		Version:   o.MQTTVersion,
		KeepAlive: o.KeepAlive,
		Will:      &w,
		// Tells mqttinfer's broker in open mode that this client takes
		// every request (it gives it a deeper queue); with auth on the
		// worker role says so, and other brokers ignore it.
		ConnectUser: []mqttclient.UserProperty{{Key: topics.WorkerRoleProperty, Value: topics.WorkerRole}},
		OnMessage:   func(m mqttclient.Message) { s.events <- m },
	})
	return err
}

// run serves until the connection is lost (its error) or ctx is done
// (then it leaves gracefully and returns nil).
func (s *session) run(ctx context.Context) error {
	defer s.r.setSession(nil)
	o := s.r.opts
	subs := []mqttclient.Subscription{
		{Filter: topics.NodeStatusFilter(o.Prefix, topics.Latest()), QoS: 1},
		{Filter: topics.RequestFilter(o.Prefix), QoS: 1},
		{Filter: topics.ResultFilter(o.Prefix, "", "", ""), QoS: 1, NoLocal: true},
		{Filter: topics.SentFilter(o.Prefix), QoS: 1, NoLocal: true},
	}
	subCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := s.conn.Subscribe(subCtx, subs...)
	cancel()
	if err != nil {
		s.conn.Close()
		return err
	}
	s.r.setSession(s)
	s.r.core.Metrics.WorkerUp("remote", true)
	defer func() {
		s.r.core.Metrics.WorkerUp("remote", false)
		s.r.core.Metrics.Group(0, 0)
	}()
	s.r.log.Info("connected; joining the group", "broker", s.url, "client_id", o.ClientID, "group", o.Group,
		"node", o.Node, "incarnation", s.inc, "mqtt", s.conn.Version())
	if err := s.publishCatalog(); err != nil {
		s.r.log.Warn("publish catalog", "error", err)
	}
	// Before it announces itself, the worker checks that no live worker
	// of its group uses its node id: the retained statuses reach it before
	// its own "joining" probe comes back.
	probe, err := s.statusMessages("joining")
	if err != nil {
		s.conn.Close()
		return err
	}
	p := probe[len(probe)-1]
	p.Retain = false
	if err := s.conn.Send(p); err != nil {
		s.conn.Close()
		return err
	}

	tick := time.NewTicker(s.r.opts.Heartbeat)
	defer tick.Stop()
	leaving := ctx.Done()
	var drainTimeout <-chan time.Time
	for {
		select {
		case m := <-s.events:
			if err := s.handle(m, time.Now()); err != nil {
				s.conn.Close()
				return err
			}
		case <-s.wake:
			s.apply(s.g.evaluate(time.Now()))
		case now := <-tick.C:
			s.heartbeat(now)
		case <-s.r.opts.CatalogChanged:
			if err := s.publishCatalog(); err != nil {
				s.r.log.Warn("publish catalog", "error", err)
			}
		case <-leaving:
			leaving = nil
			s.r.log.Info("leaving the group: handing the partitions over as their requests finish")
			s.apply(s.g.leave(time.Now()))
			drainTimeout = time.After(o.DrainTimeout)
		case <-drainTimeout:
			drainTimeout = nil
			s.r.log.Warn("drain timeout: canceling the models still running; their requests are answered 503", "timeout", o.DrainTimeout)
			go s.r.stopPool(0)
		case <-s.conn.Done():
			return s.conn.Err()
		}
		// Status changes are published together when the events have been
		// taken, or at the latest after statusDelay under a steady stream.
		if s.dirty && s.probed && (len(s.events) == 0 || time.Since(s.dirtySince) > statusDelay) {
			s.publishStatus()
		}
		if leaving == nil && s.g.idle() {
			return s.finish()
		}
	}
}

// finish ends a graceful departure: no partition is claimed any more.
func (s *session) finish() error {
	s.r.stopPool(0) // nothing runs: returns at once
	msgs, err := s.statusMessages("offline")
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for _, m := range msgs {
			if err := s.conn.Publish(ctx, m); err != nil {
				s.r.log.Warn("publish offline status", "error", err)
			}
		}
		cancel()
	}
	s.r.log.Info("left the group; disconnecting")
	return s.conn.Close()
}

// handle acts on one message: a status of the group, a request, or a reply
// another worker sent.
func (s *session) handle(m mqttclient.Message, now time.Time) error {
	t, err := topics.Parse(s.r.opts.Prefix, m.Topic)
	switch t.Kind {
	case topics.KindStatus:
		if err != nil || t.Version != topics.Latest() {
			return nil
		}
		var st Status
		if json.Unmarshal(m.Payload, &st) != nil || st.Transport != transportRemote || st.Group != s.r.opts.Group {
			return nil
		}
		if st.Node == s.r.opts.Node && !s.probed {
			return s.probing(st, m.Retain, now)
		}
		s.apply(s.g.status(st, m.Retain, now))
	case topics.KindRequest:
		s.request(t, err, m, now, nil)
	case topics.KindResult:
		if err == nil {
			s.observeReply(t, m, now)
		}
	case topics.KindSent:
		if err == nil {
			s.observeSent(t, m, now)
		}
	}
	return nil
}

// probing takes a status of this worker's node before its probe came
// back: another live worker with this node id is a conflict, found when the
// probe returns; the probe itself starts the worker's membership.
func (s *session) probing(st Status, retained bool, now time.Time) error {
	switch {
	case st.Incarnation == s.inc:
		if st.State != "joining" {
			return nil
		}
		s.probed = true
		if s.conflict != "" {
			s.r.log.Error("another live worker of the group uses this node id; exiting", "node", st.Node, "other_incarnation", s.conflict)
			return errNodeConflict
		}
		s.publishStatus()
	case (st.State == "online" || st.State == "leaving") && !s.r.ours(st.Incarnation) &&
		now.Sub(time.UnixMilli(st.At)) < s.g.timeout:
		s.conflict = st.Incarnation
	}
	return nil
}

// request takes a request: it serves it when its device is in a partition
// it serves, or holds a copy until another worker has answered it.
// canceled, when set, is the context of a copy its device canceled.
func (s *session) request(t topics.Topic, perr error, m mqttclient.Message, received time.Time, canceled context.Context) {
	if perr != nil && !errors.Is(perr, topics.ErrUnsupportedVersion) {
		s.r.core.Metrics.Rejected("bad_topic")
		s.r.log.Debug("request on a malformed topic dropped: there is no topic to answer on", "topic", m.Topic, "error", perr)
		return
	}
	k := Partition(t.Device)
	if s.g.serves(k) {
		s.serve(t, perr, m, received, canceled)
		return
	}
	h, ok := api.PeekRequest(m.Payload, m.Properties.ContentType)
	if !ok {
		return // malformed: its owner answers it 400, or nobody can
	}
	if h.Cancel {
		if h.ID != "" {
			s.held.cancel(heldKey{t.Device, h.ID})
		}
		return
	}
	if h.ID == "" {
		h.ID = api.ContentID(m.Topic, m.Payload)
	}
	s.held.hold(k, &held{msg: m, topic: t, received: received, key: heldKey{t.Device, h.ID}})
}

// serve admits a request of a partition this worker serves and runs it.
func (s *session) serve(t topics.Topic, perr error, m mqttclient.Message, received time.Time, canceled context.Context) {
	r := &pipeline.Request{
		Topic:           t,
		Payload:         m.Payload,
		QoS:             m.QoS,
		Received:        received,
		ContentType:     m.Properties.ContentType,
		CorrelationData: m.Properties.CorrelationData,
		ResponseTopic:   pipeline.VetResponseTopic(t, m.Properties.ResponseTopic),
	}
	if perr != nil {
		e := api.Errorf(api.UnsupportedVersion, "API version %q is not supported", t.Version)
		e.Versions = topics.Versions()
		s.reject(r, e)
		return
	}
	if e := s.r.adm.Admit(r); e != nil {
		s.reject(r, e)
		return
	}
	if r.Body.Cancel {
		if !s.r.pool.Cancel(t.Device, r.Body.ID) {
			s.reject(r, api.Errorf(api.InvalidRequest, "no queued or running request with id %q to cancel", r.Body.ID))
		}
		return
	}
	out := &replier{s: s, r: r, key: newReplyKey(r)}
	if out.skip() {
		r.Done()
		return
	}
	k := Partition(t.Device)
	s.begin(k)
	err := s.r.pool.Serve(r, out, Task{Context: canceled, Skip: out.skip, Done: func() { s.end(k) }})
	if err != nil {
		s.end(k)
		r.Refund()
		r.Done()
		var e *api.Error
		if !errors.As(err, &e) {
			e = api.Errorf(api.Overloaded, "the worker is out of capacity: %v", err)
		}
		s.reject(r, e)
	}
}

// reject answers a request with an error reply.
func (s *session) reject(r *pipeline.Request, e *api.Error) {
	reply, err := s.r.adm.ErrorReply(r, e)
	if err != nil {
		s.r.log.Error("encode reply", "error", err)
		return
	}
	s.send(r, reply)
}

// replier sends the replies of one request and remembers its final one.
type replier struct {
	s   *session
	r   *pipeline.Request
	key replyKey
}

func (o *replier) Send(p pipeline.Reply, _ byte) error {
	if p.Final() && worthKeeping(p.Status) {
		o.s.r.replies.put(o.key, p, time.Now())
	}
	return o.s.send(o.r, p)
}

// skip answers the request from the reply cache when a copy of it was
// answered already (the device sent it again); it runs no model then.
func (o *replier) skip() bool {
	p, ok := o.s.r.replies.get(o.key, time.Now())
	if !ok {
		return false
	}
	o.r.Refund()
	o.s.r.core.Metrics.Duplicate()
	o.s.r.log.Debug("copy of an answered request answered from the cache", "topic", o.r.Topic.String(), "id", o.r.Body.ID)
	_ = o.s.send(o.r, p)
	return true
}

// sentMessage is the record of a final reply sent to an MQTT 5 response
// topic (topics.KindSent): the other workers of the group see replies on
// result topics themselves, and learn of these from it. It is published
// just before the reply: a worker that dies between the two loses that
// reply (the device asks again), where the other order would have the
// request answered twice.
type sentMessage struct {
	ID     string `json:"id"`
	Status int    `json:"status"`
	Topic  string `json:"topic"`
}

// send publishes a reply to r, after its sent record when it is the final
// reply of a request answered on a response topic.
func (s *session) send(r *pipeline.Request, p pipeline.Reply) error {
	msg := mqttclient.Message{Topic: p.Topic, Payload: p.Payload, QoS: r.QoS}
	if p.Properties {
		msg.Properties = mqttclient.Properties{
			CorrelationData: p.CorrelationData,
			ContentType:     p.ContentType,
			User:            []mqttclient.UserProperty{{Key: pipeline.StatusProperty, Value: p.StatusValue()}},
		}
	}
	if p.Final() && p.Topic != r.Topic.ResultTopic() {
		rec, err := json.Marshal(sentMessage{ID: r.Body.ID, Status: p.Status, Topic: p.Topic})
		if err == nil {
			err = s.conn.Send(mqttclient.Message{Topic: r.Topic.SentTopic(), Payload: rec, QoS: 1})
		}
		if err != nil {
			s.r.core.Metrics.Dropped()
			return err
		}
	}
	if err := s.conn.Send(msg); err != nil {
		s.r.core.Metrics.Dropped()
		s.r.log.Debug("publish reply", "topic", p.Topic, "error", err)
		return err
	}
	return nil
}

// observeReply takes note of a reply another worker sent on a result
// topic: the copy of its request is no longer needed, or its stream is
// under way.
func (s *session) observeReply(t topics.Topic, m mqttclient.Message, now time.Time) {
	h, ok := api.PeekReply(m.Payload, m.Properties.ContentType)
	if !ok || h.ID == "" {
		return
	}
	key := heldKey{t.Device, h.ID}
	if h.Final() {
		s.held.done(key, now)
	} else {
		s.held.delta(key, h.Seq, now)
	}
}

// observeSent takes note of the record of a reply another worker sent to a
// response topic.
func (s *session) observeSent(t topics.Topic, m mqttclient.Message, now time.Time) {
	var rec sentMessage
	if json.Unmarshal(m.Payload, &rec) != nil || rec.ID == "" {
		return
	}
	s.held.done(heldKey{t.Device, rec.ID}, now)
}

// apply carries out a change of the group's state.
func (s *session) apply(c groupChange) {
	if c.publish {
		s.markDirty()
	}
	if len(c.start) > 0 {
		s.forget(c.start)
	}
	for _, k := range append(c.start, c.resume...) {
		for _, h := range s.held.take(k) {
			s.replay(h)
		}
	}
	s.mu.Lock()
	s.serving = s.g.serving
	n := s.serving.len()
	first := !s.taking && n > 0
	s.taking = s.taking || first
	s.ready = s.g.readiness()
	s.mu.Unlock()
	s.r.core.Metrics.Group(n, s.held.len())
	if first {
		s.r.log.Info("taking requests", "partitions", n, "of", Partitions)
	}
	if len(c.start)+len(c.stop)+len(c.resume) > 0 {
		s.r.log.Debug("partitions moved", "start", len(c.start), "resume", len(c.resume), "stop", len(c.stop), "serving", n)
	}
}

// forget drops the models' state of the devices of partitions this
// worker starts to serve: another worker may have served them since.
func (s *session) forget(parts []int) {
	var set partSet
	for _, k := range parts {
		set.add(k)
	}
	match := func(device string) bool { return set.has(Partition(device)) }
	for _, name := range s.r.core.Models.Names() {
		if m, ok := s.r.core.Models.Get(name); ok {
			if f, ok := m.(inference.Forgetter); ok {
				f.Forget(match)
			}
		}
	}
}

// replay runs a copy of a request of a partition this worker has just
// taken over.
func (s *session) replay(h *held) {
	t, err := topics.Parse(s.r.opts.Prefix, h.msg.Topic)
	if h.streamed {
		s.cutStream(h)
		return
	}
	var canceled context.Context
	if h.canceled {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		canceled = ctx
	}
	s.request(t, err, h.msg, h.received, canceled)
}

// cutStream ends a stream that another worker had begun when it went away:
// its deltas cannot be sent again from the start, so it ends with a 503
// error event that follows them, and the device asks again.
func (s *session) cutStream(h *held) {
	r := &pipeline.Request{Topic: h.topic, Payload: h.msg.Payload, QoS: h.msg.QoS, Received: h.received,
		ContentType: h.msg.Properties.ContentType, CorrelationData: h.msg.Properties.CorrelationData,
		ResponseTopic: pipeline.VetResponseTopic(h.topic, h.msg.Properties.ResponseTopic)}
	r.Body.ID = h.key.id
	e := api.Errorf(api.Overloaded, "the worker streaming this answer went away after event %d; ask again", h.lastSeq)
	ev := api.StreamEvent{ID: h.key.id, Model: h.topic.Model, Seq: h.lastSeq + 1, Event: api.EventError, Status: e.Status(), Error: e}
	if p, err := r.Reply(ev, ev.Status); err == nil {
		s.r.core.Metrics.Request(h.topic.Version, h.topic.Model, ev.Status)
		_ = s.send(r, p)
	}
}

// begin and end count the requests of partition k handed to the pool.
func (s *session) begin(k int) {
	s.mu.Lock()
	s.inflight[k]++
	s.mu.Unlock()
}

func (s *session) end(k int) {
	s.mu.Lock()
	s.inflight[k]--
	idle := s.inflight[k] == 0
	s.mu.Unlock()
	if idle {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// busy reports whether requests of partition k are running or queued.
func (s *session) busy(k int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight[k] > 0
}

func (s *session) readiness() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

// heartbeat republishes the status and ages the group and the copies.
func (s *session) heartbeat(now time.Time) {
	s.apply(s.g.evaluate(now))
	if n := s.held.expire(now); n > 0 {
		s.r.log.Warn("copies of requests dropped: no worker answered them before their deadline", "count", n)
	}
	m := s.r.core.Metrics
	m.HeldDropped(s.held.takeDropped())
	m.Group(s.g.serving.len(), s.held.len())
	s.markDirty()
}

// markDirty notes that the status must be published.
func (s *session) markDirty() {
	if !s.dirty {
		s.dirty, s.dirtySince = true, time.Now()
	}
}

// statusDelay bounds how long a status change waits to be published while
// events keep coming.
const statusDelay = 20 * time.Millisecond

// transportRemote is the transport of remote workers in their status.
const transportRemote = "remote"

// statusMessages are the worker's status messages in state.
func (s *session) statusMessages(state string) ([]mqttclient.Message, error) {
	st := Status{
		Node:        s.r.opts.Node,
		State:       state,
		Version:     s.r.opts.Version,
		Transport:   transportRemote,
		Models:      s.r.core.Models.Names(),
		QueueDepth:  s.r.pool.QueueDepth(),
		Since:       s.started.UTC().Format(time.RFC3339),
		Group:       s.r.opts.Group,
		Incarnation: s.inc,
		At:          time.Now().UnixMilli(),
	}
	if state != "offline" {
		st.Partitions = s.g.state()
	}
	anns, err := StatusMessages(s.r.opts.Prefix, st)
	if err != nil {
		return nil, err
	}
	out := make([]mqttclient.Message, len(anns))
	for i, a := range anns {
		out[i] = mqttclient.Message{Topic: a.Topic, Payload: a.Payload, QoS: 1, Retain: true}
		if state == "offline" {
			// A worker's node id is random unless set: the broker forgets
			// the retained statuses of workers gone for a day (MQTT 5).
			out[i].Properties.MessageExpiry = offlineExpiry
		}
	}
	return out, nil
}

// offlineExpiry is how long a broker keeps the retained offline status of
// a worker that has gone.
const offlineExpiry = 24 * time.Hour

// publishStatus publishes the worker's status as it is now.
func (s *session) publishStatus() {
	s.dirty = false
	state := "online"
	if s.g.leaving {
		state = "leaving"
	}
	msgs, err := s.statusMessages(state)
	if err != nil {
		s.r.log.Error("encode status", "error", err)
		return
	}
	for _, m := range msgs {
		if err := s.conn.Send(m); err != nil {
			s.r.log.Debug("publish status", "error", err)
		}
	}
}

func (s *session) publishCatalog() error {
	anns, err := Catalog(s.r.opts.Prefix, s.r.core.Models)
	if err != nil {
		return err
	}
	for _, a := range anns {
		if err := s.conn.Send(mqttclient.Message{Topic: a.Topic, Payload: a.Payload, QoS: 1, Retain: true}); err != nil {
			return err
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// brokerList splits a comma-separated list of broker URLs.
func brokerList(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}
