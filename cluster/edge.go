package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// publishTimeout bounds how long an edge tries to put a request into the
// request stream (while a NATS server is replaced and a stream elects a
// new leader) before it answers 503; the device waits that long for its
// PUBACK at most.
const publishTimeout = 20 * time.Second

// Broker is what an edge needs of the embedded broker (*broker.Broker):
// publishing replies to its subscribers, or to one device's clients alone,
// and the nodes' retained statuses.
type Broker interface {
	Send(p pipeline.Reply, qos byte) error
	SendTo(device string, p pipeline.Reply, qos byte) (bool, error)
	RetainedPublisher
}

// EdgeOptions configure an edge.
type EdgeOptions struct {
	Options
	// Conn is the edge's NATS connection (it stays the caller's).
	Conn *nats.Conn
	// Node is the edge's node id.
	Node string
	// Hold is how long an accepted request keeps its device's in-flight
	// slot at most when no result comes back for it (its deadline, and
	// then some).
	Hold time.Duration
	// Throttle is the broker's throttle, nil for none: a device that
	// moved here from another edge gets its bucket from there (as its last
	// result left it).
	Throttle *throttle.Limiter
	// Metrics counts; nil counts nothing.
	Metrics *metrics.Metrics
	// Log receives the edge's logs.
	Log *slog.Logger
}

// Edge connects the embedded broker to the backbone: as the broker's
// dispatcher it puts every accepted request into the request stream (the
// device's PUBACK waits for the stream's ack), and it publishes every
// result of the result stream on the broker, for the devices and watchers
// connected here.
//
// As the broker's Sessions, it keeps for each device connected here the
// cursor of its results: the result stream's sequence up to which the
// device has them all (acknowledged, at QoS 1 and 2). The cursors go to a
// key-value bucket every second and when the device leaves; when a device
// connects to an edge (another, because its edge died, or this one again)
// and subscribes, the edge sends it the results it missed since its cursor.
type Edge struct {
	o       EdgeOptions
	names   Names
	inc     string
	js      jetstream.JetStream
	reqs    jetstream.Stream   // the request stream
	res     jetstream.Stream   // the result stream
	kv      jetstream.KeyValue // the cursors
	status  jetstream.KeyValue // the nodes' statuses
	log     *slog.Logger
	n       atomic.Uint64 // numbers the requests without an id
	pumped  atomic.Uint64 // the result stream's sequence the pump has reached
	replays chan replayJob

	mu      sync.Mutex
	pending map[string]held // accepted here, not answered yet, by key
	workers map[string]time.Time
	devs    map[string]*devState // the devices connected here
	cur     sending              // the result the pump is publishing
	started bool
}

// devState is what the edge keeps of a device connected to it.
type devState struct {
	conns   int               // its clients connected here
	pending map[uint16]uint64 // result sequence by packet id: sent, not acknowledged
	handed  uint64            // the latest result sequence the pump has passed
	replay  replayState
	dirty   bool // the cursor moved since it was stored
}

type replayState uint8

const (
	replayNone    replayState = iota
	replayWanted              // it has a cursor: replay when it subscribes
	replayRunning             // the missed results are on their way
)

// cursor is the sequence up to which the device has every result; not
// known (false) while the results it missed are still on their way.
func (st *devState) cursor() (uint64, bool) {
	if st.replay != replayNone {
		return 0, false
	}
	c := st.handed
	for _, seq := range st.pending {
		c = min(c, seq-1)
	}
	return c, true
}

// sending is the result the pump is publishing to a device connected here.
type sending struct {
	device string
	seq    uint64
	st     *devState
}

// replayJob is the results a device missed, for the pump to send it.
type replayJob struct {
	device string
	st     *devState
	msgs   []*jetstream.RawStreamMsg
}

type held struct {
	r  *pipeline.Request
	at time.Time
}

// NewEdge returns an edge. Setup makes the streams (Start calls it); until
// Start, Dispatch refuses requests.
func NewEdge(o EdgeOptions) (*Edge, error) {
	o.Options = o.Options.withDefaults()
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, err
	}
	if o.Hold <= 0 {
		o.Hold = 2 * time.Minute
	}
	e := &Edge{o: o, names: NamesFor(o.Prefix), inc: randomHex(4), js: js, log: o.Log,
		pending: map[string]held{}, workers: map[string]time.Time{}, devs: map[string]*devState{},
		replays: make(chan replayJob, 64)}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	return e, nil
}

// Setup creates or checks the service's streams, waiting (until ctx ends)
// for the NATS cluster to be ready.
func (e *Edge) Setup(ctx context.Context) error {
	o, err := setupRetry(ctx, e.o.Conn, e.js, e.o.Options, e.log, func(ctx context.Context, _ Options) error {
		var err error
		if e.reqs, err = e.js.Stream(ctx, e.names.RequestStream()); err != nil {
			return fmt.Errorf("stream %s: %w", e.names.RequestStream(), err)
		}
		if e.res, err = e.js.Stream(ctx, e.names.ResultStream()); err != nil {
			return fmt.Errorf("stream %s: %w", e.names.ResultStream(), err)
		}
		if e.kv, err = e.js.KeyValue(ctx, e.names.CursorBucket()); err != nil {
			return fmt.Errorf("bucket %s: %w", e.names.CursorBucket(), err)
		}
		if e.status, err = e.js.KeyValue(ctx, e.names.StatusBucket()); err != nil {
			return fmt.Errorf("bucket %s: %w", e.names.StatusBucket(), err)
		}
		// The pump starts after the results stored so far: a device
		// that connects before its first result gets a cursor from here.
		info, err := e.res.Info(ctx)
		if err != nil {
			return fmt.Errorf("stream %s: %w", e.names.ResultStream(), err)
		}
		e.pumped.Store(info.State.LastSeq)
		return nil
	})
	if err != nil {
		return err
	}
	e.o.Options = o
	return nil
}

// Dispatch puts an accepted request into the request stream, in its
// device's partition, and returns once the stream has it (replicated):
// the broker PUBACKs the request only then. A copy of a request the
// stream has already (the same device, model and id) is taken and not
// run again.
func (e *Edge) Dispatch(r *pipeline.Request) error {
	ownID := false
	if h, ok := api.PeekRequest(r.Payload, r.ContentType); ok && h.ID != "" {
		ownID = true
	}
	key := requestKey(r, ownID, e.o.Node+"/"+e.inc, e.n.Add(1))
	m := requestMsg(e.names.RequestSubject(Partition(r.Topic.Device, e.o.Partitions), r.Topic.Device), r, key, e.o.Node)
	if r.Body.Cancel {
		defer r.Done()
	}
	ack, err := publishAck(e.js, m, publishTimeout)
	if isAPIError(err) {
		e.log.Debug("request refused by the request stream", "device", r.Topic.Device, "error", err)
		return api.Errorf(api.Overloaded, "the cluster's request queue is full (%d waiting); retry later", e.o.MaxQueued)
	}
	if err != nil {
		e.log.Warn("request not taken by the request stream", "device", r.Topic.Device, "error", err)
		return api.Errorf(api.Overloaded, "the cluster did not take the request: %v", err)
	}
	if r.Body.Cancel {
		return nil
	}
	if ack.Duplicate {
		e.o.Metrics.Duplicate()
		r.Refund()
		r.Done()
		return nil
	}
	e.mu.Lock()
	e.pending[key] = held{r: r, at: time.Now()}
	e.mu.Unlock()
	return nil
}

// publishAck publishes m to a stream and returns the stream's ack, trying
// again (with the same message id: the stream keeps one copy) while a NATS
// server is replaced or a stream elects a new leader, for at most total.
// A refusal by the stream (it is full) is returned at once.
func publishAck(js jetstream.JetStream, m *nats.Msg, total time.Duration) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(context.Background(), total)
	defer cancel()
	var ack *jetstream.PubAck
	err := retry(ctx, 2*time.Second, 50*time.Millisecond, isAPIError, func(ctx context.Context) error {
		var err error
		ack, err = js.PublishMsg(ctx, m)
		return err
	})
	return ack, err
}

// pumpCheck is how long the result pump may hear nothing from its consumer
// before it checks whether the stream has results it has not delivered.
const pumpCheck = 3 * time.Second

// errPumpStalled is the result pump's consumer hearing nothing while the
// stream has results for it.
var errPumpStalled = errors.New("result consumer stalled")

// Run delivers results to b until ctx ends.
func (e *Edge) Run(ctx context.Context, b Broker) error {
	sub, err := e.o.Conn.Subscribe(e.names.MembersSubject(), e.heardWorker)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	e.mu.Lock()
	e.started = true
	e.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { e.sweep(ctx) })
	wg.Go(func() { e.flushCursors(ctx) })
	wg.Go(func() { e.mirror(ctx, b) })
	defer wg.Wait()
	for ctx.Err() == nil {
		if err := e.pump(ctx, b); err != nil && ctx.Err() == nil {
			e.log.Warn("result stream", "error", err)
			if errors.Is(err, errPumpStalled) {
				continue // the stream is there: a new consumer at once
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// pump publishes the results of the result stream in order, from the
// first one stored after the edge started (and after the last one it
// published, when the consumer is made again), and the results devices
// missed (replays), one at a time.
func (e *Edge) pump(ctx context.Context, b Broker) error {
	cons, err := e.js.OrderedConsumer(ctx, e.names.ResultStream(), jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   e.pumped.Load() + 1,
	})
	if err != nil {
		return fmt.Errorf("result consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullExpiry(2*time.Second), jetstream.PullHeartbeat(500*time.Millisecond))
	if err != nil {
		return fmt.Errorf("result consumer: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	live := make(chan jetstream.Msg, 256)
	go func() {
		defer close(live)
		for {
			msg, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				e.log.Debug("result stream", "error", err)
				continue
			}
			live <- msg
		}
	}()
	// A consumer that hears nothing while the stream has results after
	// the last one published is made again: nothing of the result stream
	// may wait on a consumer the cluster lost (one on a NATS server that
	// died, which the client library did not replace).
	check := time.NewTicker(pumpCheck)
	defer check.Stop()
	heard := false
	for {
		select {
		case msg, ok := <-live:
			if !ok {
				return nil
			}
			heard = true
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			e.deliver(b, meta.Sequence.Stream, msg, false)
			e.pumped.Store(meta.Sequence.Stream)
		case <-check.C:
			if heard {
				heard = false
				continue
			}
			ictx, cancel := context.WithTimeout(ctx, pumpCheck)
			info, err := e.res.Info(ictx)
			cancel()
			if err == nil && info.State.Msgs > 0 && info.State.LastSeq > e.pumped.Load() {
				return fmt.Errorf("%w: at %d while the stream holds results up to %d", errPumpStalled, e.pumped.Load(), info.State.LastSeq)
			}
		case job := <-e.replays:
			for _, m := range job.msgs {
				e.deliver(b, m.Sequence, rawMsg{m}, true)
			}
			e.mu.Lock()
			if job.st.replay == replayRunning {
				job.st.replay = replayNone
				job.st.dirty = true
			}
			e.mu.Unlock()
		}
	}
}

// deliver publishes one result on the broker: to every subscriber, or to
// its device's clients alone (a replay). For a device connected here it
// moves the device's cursor, or notes the packet ids that must be
// acknowledged before it does.
func (e *Edge) deliver(b Broker, seq uint64, msg jsMsg, replay bool) {
	res, err := parseResult(msg)
	if err != nil {
		e.log.Warn("result message dropped", "seq", seq, "error", err)
		return
	}
	e.mu.Lock()
	st := e.devs[res.device]
	if st != nil {
		e.cur = sending{device: res.device, seq: seq, st: st}
	}
	e.mu.Unlock()
	if replay {
		_, err = b.SendTo(res.device, res.reply, res.qos)
	} else {
		err = b.Send(res.reply, res.qos)
	}
	if err != nil {
		e.log.Debug("publish result", "topic", res.reply.Topic, "error", err)
	}
	e.mu.Lock()
	e.cur = sending{}
	if st != nil && e.devs[res.device] == st {
		st.handed = max(st.handed, seq)
		st.dirty = true
	}
	e.mu.Unlock()
	if res.reply.Final() && !replay && e.answered(res.key) {
		// Counted by the edge that took the request, once in the cluster.
		if t, err := topics.Parse(e.o.Prefix, res.request); err == nil {
			e.o.Metrics.RemoteRequest(t.Version, t.Model, res.reply.Status)
		}
	}
}

// rawMsg is a message read directly from a stream, as a jsMsg.
type rawMsg struct{ m *jetstream.RawStreamMsg }

func (r rawMsg) Headers() nats.Header { return r.m.Header }
func (r rawMsg) Data() []byte         { return r.m.Data }

// Connected notes a device's client (broker.Sessions). A device new to
// this edge gets its throttle bucket as its last result left it, and its
// cursor: one it had (from another edge, or an earlier visit) for a replay
// when it subscribes, or a new one from the results stored so far.
func (e *Edge) Connected(device string) {
	e.mu.Lock()
	if st := e.devs[device]; st != nil {
		st.conns++
		e.mu.Unlock()
		return
	}
	from := e.pumped.Load()
	st := &devState{conns: 1, pending: map[uint16]uint64{}, handed: from}
	e.devs[device] = st
	e.mu.Unlock()
	if e.kv == nil {
		return
	}
	e.restoreBucket(device)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A device new to the cluster (or back after result_ttl) gets a cursor
	// at once, in case this edge dies; one that has a cursor gets what it
	// missed since, when it subscribes.
	_, err := e.kv.Create(ctx, DeviceToken(device), []byte(strconv.FormatUint(from, 10)))
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		e.mu.Lock()
		if st.replay == replayNone {
			st.replay = replayWanted
		}
		e.mu.Unlock()
	case err != nil:
		e.log.Warn("device cursor not kept: the device gets no results it misses", "device", device, "error", err)
	}
}

// restoreBucket sets a device's bucket as the edge that took its last
// request left it: that request's own bucket when it is still queued (not
// run yet), else its last result's. The look-ups are tried again for up to
// 5 s (the device's requests wait: they are read only after this) while
// the streams do not answer, as after an edge died and its devices all
// arrive here at once; a device whose bucket cannot be read gets a full
// one, and the log says so.
func (e *Edge) restoreBucket(device string) {
	l := e.o.Throttle
	if l == nil || !(l.Limits(device).Rate > 0) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rl *api.RateLimit
	var at time.Time
	for _, look := range []struct {
		s       jetstream.Stream
		subject string
	}{
		{e.reqs, e.names.RequestSubject(Partition(device, e.o.Partitions), device)},
		{e.res, e.names.ResultSubject(device)},
	} {
		m, err := lastMsg(ctx, look.s, look.subject)
		if err != nil {
			e.log.Warn("device's throttle bucket not read: it starts full here", "device", device, "error", err)
			return
		}
		if m == nil {
			continue
		}
		if r, t := rateLimitOf(m.Header), receivedAt(m.Header); r != nil && t.After(at) {
			rl, at = r, t
		}
	}
	if rl == nil {
		return // none kept (a device new to the cluster): a full bucket
	}
	// The ratelimit says when the bucket is full again: that many
	// seconds' worth of tokens were missing from a full one.
	lim := l.Limits(device)
	tokens := float64(rl.Limit) - lim.Rate*float64(rl.ResetMS)/1000
	l.Restore(device, tokens, at)
	e.log.Debug("device's throttle bucket restored", "device", device, "tokens", tokens, "at", at)
}

// lastMsg is the last message of subject in s, nil when there is none,
// asked again (retry, 1 s a try) while s does not answer, until ctx ends.
func lastMsg(ctx context.Context, s jetstream.Stream, subject string) (*jetstream.RawStreamMsg, error) {
	notFound := func(err error) bool { return errors.Is(err, jetstream.ErrMsgNotFound) }
	var m *jetstream.RawStreamMsg
	err := retry(ctx, time.Second, 100*time.Millisecond, notFound, func(ctx context.Context) error {
		var err error
		m, err = s.GetLastMsgForSubject(ctx, subject)
		return err
	})
	if notFound(err) {
		return nil, nil
	}
	return m, err
}

// Subscribed starts the replay of the results a device missed, once per
// connection (broker.Sessions).
func (e *Edge) Subscribed(device string) {
	e.mu.Lock()
	st := e.devs[device]
	if st == nil || st.replay != replayWanted {
		e.mu.Unlock()
		return
	}
	st.replay = replayRunning
	upto := e.pumped.Load()
	e.mu.Unlock()
	go e.replay(device, st, upto)
}

// replay reads the results of device after its cursor, up to upto (the
// pump publishes the later ones), and hands them to the pump. The cursor
// is read now, not when the device connected: the edge it came from
// stores it when the device leaves there.
func (e *Edge) replay(device string, st *devState, upto uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var msgs []*jetstream.RawStreamMsg
	entry, err := e.kv.Get(ctx, DeviceToken(device))
	var from uint64
	if err == nil {
		from, err = strconv.ParseUint(string(entry.Value()), 10, 64)
	}
	if err != nil {
		e.log.Warn("device cursor not read: the device gets no results it missed", "device", device, "error", err)
		from = upto
	}
	subject := e.names.ResultSubject(device)
	for seq := from + 1; seq <= upto; {
		m, err := e.res.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				e.log.Warn("replay of missed results cut short", "device", device, "error", err)
			}
			break
		}
		if m.Sequence > upto {
			break
		}
		msgs = append(msgs, m)
		seq = m.Sequence + 1
	}
	if len(msgs) > 0 {
		e.log.Info("results a device missed sent again", "device", device, "count", len(msgs))
		e.o.Metrics.Replayed(len(msgs))
	}
	select {
	case e.replays <- replayJob{device: device, st: st, msgs: msgs}:
	case <-ctx.Done():
	}
}

// Sent notes the packet id of a result sent to a device (broker.Sessions).
func (e *Edge) Sent(device string, id uint16) {
	e.mu.Lock()
	if e.cur.device == device {
		e.cur.st.pending[id] = e.cur.seq
	}
	e.mu.Unlock()
}

// Acked notes a device's acknowledgement (broker.Sessions).
func (e *Edge) Acked(device string, id uint16) {
	e.mu.Lock()
	if st := e.devs[device]; st != nil {
		if _, ok := st.pending[id]; ok {
			delete(st.pending, id)
			st.dirty = true
		}
	}
	e.mu.Unlock()
}

// Disconnected stores the cursor of a device whose last client here left
// (broker.Sessions), before the broker drops its subscriptions: an edge
// the device moves to reads it there.
func (e *Edge) Disconnected(device string) {
	e.mu.Lock()
	st := e.devs[device]
	if st == nil {
		e.mu.Unlock()
		return
	}
	if st.conns--; st.conns > 0 {
		e.mu.Unlock()
		return
	}
	delete(e.devs, device)
	c, ok := st.cursor()
	e.mu.Unlock()
	if ok && e.kv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := e.kv.Put(ctx, DeviceToken(device), []byte(strconv.FormatUint(c, 10))); err != nil {
			e.log.Warn("device cursor not stored", "device", device, "error", err)
		}
	}
}

// flushCursors stores the cursors that moved, every second.
func (e *Edge) flushCursors(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		moved := map[string]uint64{}
		e.mu.Lock()
		for d, st := range e.devs {
			if c, ok := st.cursor(); ok && st.dirty {
				moved[d] = c
				st.dirty = false
			}
		}
		e.mu.Unlock()
		e.storeCursors(moved)
	}
}

// storeCursors puts cursors into the bucket, all at once.
func (e *Edge) storeCursors(cursors map[string]uint64) {
	if len(cursors) == 0 || e.kv == nil {
		return
	}
	for d, c := range cursors {
		m := nats.NewMsg("$KV." + e.names.CursorBucket() + "." + DeviceToken(d))
		m.Data = []byte(strconv.FormatUint(c, 10))
		if _, err := e.js.PublishMsgAsync(m); err != nil {
			e.log.Debug("store cursor", "device", d, "error", err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(5 * time.Second):
		e.log.Warn("device cursors not stored within 5s", "count", len(cursors))
	}
}

// answered gives back the in-flight slot of a request accepted here; it
// reports whether there was one.
func (e *Edge) answered(key string) bool {
	e.mu.Lock()
	h, ok := e.pending[key]
	delete(e.pending, key)
	e.mu.Unlock()
	if ok {
		h.r.Done()
	}
	return ok
}

// sweep gives back the in-flight slots of requests whose result never
// came back here within Hold.
func (e *Edge) sweep(ctx context.Context) {
	t := time.NewTicker(e.o.Hold / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var late []*pipeline.Request
			e.mu.Lock()
			for k, h := range e.pending {
				if now.Sub(h.at) > e.o.Hold {
					late = append(late, h.r)
					delete(e.pending, k)
				}
			}
			e.mu.Unlock()
			for _, r := range late {
				r.Done()
			}
		}
	}
}

// heardWorker notes a worker's announcement, for readiness.
func (e *Edge) heardWorker(m *nats.Msg) {
	a, ok := parseAnnouncement(m.Data)
	if !ok {
		return
	}
	e.mu.Lock()
	if a.Leaving && len(a.Holds) == 0 {
		delete(e.workers, a.Node)
	} else {
		e.workers[a.Node] = time.Now()
	}
	e.mu.Unlock()
}

// Ready reports whether the edge is connected and a worker is there.
func (e *Edge) Ready(context.Context) error {
	if !e.o.Conn.IsConnected() {
		return errors.New("not connected to NATS")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		return errors.New("the edge has not started")
	}
	for _, seen := range e.workers {
		if time.Since(seen) < deadAfterBeats*defaultHeartbeat {
			return nil
		}
	}
	return errors.New("no cluster worker has announced itself: run mqttinfer worker --cluster with the same NATS servers")
}
