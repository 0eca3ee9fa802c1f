package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

// Membership timing: a worker announces itself every heartbeat; one not
// heard of for deadAfter is gone, and its partitions are taken over.
const (
	defaultHeartbeat = 500 * time.Millisecond
	deadAfterBeats   = 3
)

// WorkerOptions configure a cluster worker.
type WorkerOptions struct {
	Options
	// Conn is the worker's NATS connection (it stays the caller's).
	Conn *nats.Conn
	// Node is the worker's id, unique among the service's workers.
	Node string
	// Pool runs the requests; the worker starts and stops it.
	Pool *worker.Pool
	// Admission decodes and checks each request again (the edge admitted
	// it: this finds the body, the id and the model); it throttles nothing.
	Admission *pipeline.Admission
	// Heartbeat is how often the worker announces itself; 0 means 500 ms.
	Heartbeat time.Duration
	// Version is the worker's version, in its status.
	Version string
	// Metrics counts; nil counts nothing.
	Metrics *metrics.Metrics
	// Log receives the worker's logs.
	Log *slog.Logger
}

// Worker serves the partitions of the request stream that are its share:
// the workers of a service find each other by their announcements on
// Names.MembersSubject, and rendezvous hashing over the live ones gives
// each partition one owner. The owner pulls the partition's consumer in
// its priority group, so that the server gives the partition's requests to
// one worker at a time (its pinned client) whatever the workers believe
// for a moment; a worker lets go of a partition by finishing what it took
// and unpinning it, and takes over the partitions of a worker that is gone
// by unpinning them at once and resetting their consumers to the oldest
// unacknowledged request, so that those are run again first, in order.
type Worker struct {
	o      WorkerOptions
	js     jetstream.JetStream
	reqs   jetstream.Stream // the request stream
	names  Names
	inc    string // this run of the worker, to tell a restart from a twin
	beat   time.Duration
	log    *slog.Logger
	mu     sync.Mutex
	peers  map[string]peer    // other workers, by node
	parts  map[int]*partition // the partitions this worker holds
	stop   chan struct{}      // closed when the worker leaves
	status jetstream.KeyValue // the nodes' statuses
	since  string             // when it came online
	twin   error              // set when another live worker has this node id
	wg     sync.WaitGroup     // the partitions' goroutines
	ready  bool
	done   *answered // the requests answered lately, not to run twice
}

// announcement is a worker's heartbeat.
type announcement struct {
	Node    string `json:"node"`
	Inc     string `json:"inc"`
	Holds   []int  `json:"holds"`
	Leaving bool   `json:"leaving,omitempty"`
}

func parseAnnouncement(b []byte) (announcement, bool) {
	var a announcement
	if json.Unmarshal(b, &a) != nil || a.Node == "" {
		return a, false
	}
	return a, true
}

type peer struct {
	inc     string
	seen    time.Time
	holds   []int
	leaving bool
}

// NewWorker returns a worker; Run serves.
func NewWorker(o WorkerOptions) *Worker {
	o.Options = o.Options.withDefaults()
	w := &Worker{
		o:     o,
		names: NamesFor(o.Prefix),
		inc:   randomHex(6),
		beat:  o.Heartbeat,
		log:   o.Log,
		peers: map[string]peer{},
		parts: map[int]*partition{},
		stop:  make(chan struct{}),
		// Twice what all its partitions can have unacknowledged.
		done: newAnswered(2 * QueueSize(o.Options)),
	}
	if w.beat <= 0 {
		w.beat = defaultHeartbeat
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w
}

// Ready reports whether the worker is connected and serving its share.
func (w *Worker) Ready(context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ready {
		return errors.New("the worker has not joined its cluster yet")
	}
	if !w.o.Conn.IsConnected() {
		return errors.New("the worker is not connected to NATS")
	}
	return nil
}

// Holds lists the partitions the worker holds now (for tests and status).
func (w *Worker) Holds() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.holdsLocked()
}

func (w *Worker) holdsLocked() []int {
	out := make([]int, 0, len(w.parts))
	for p := range w.parts {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Run sets the service's streams up, joins the workers and serves until
// ctx ends; then it leaves: it stops taking requests, finishes the ones it
// took (acknowledging them) and hands its partitions over.
func (w *Worker) Run(ctx context.Context) error {
	js, err := jetstream.New(w.o.Conn)
	if err != nil {
		return err
	}
	w.js = js
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	w.o.Options, err = setupRetry(sctx, w.o.Conn, js, w.o.Options, w.log, func(ctx context.Context, _ Options) error {
		var err error
		if w.reqs, err = js.Stream(ctx, w.names.RequestStream()); err != nil {
			return fmt.Errorf("stream %s: %w", w.names.RequestStream(), err)
		}
		if w.status, err = js.KeyValue(ctx, w.names.StatusBucket()); err != nil {
			return fmt.Errorf("bucket %s: %w", w.names.StatusBucket(), err)
		}
		return nil
	})
	cancel()
	if err != nil {
		return err
	}
	w.since = time.Now().UTC().Format(time.RFC3339)
	sub, err := w.o.Conn.Subscribe(w.names.MembersSubject(), w.heard)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", w.names.MembersSubject(), err)
	}
	defer sub.Unsubscribe()
	w.o.Pool.Start(nil)
	w.o.Metrics.WorkerUp("cluster", true)
	defer w.o.Metrics.WorkerUp("cluster", false)

	// Listen before deciding anything: a worker that just started has not
	// heard of the others yet and would take their partitions.
	dead := deadAfterBeats * w.beat
	w.announce(false)
	warm := time.NewTimer(dead)
	tick := time.NewTicker(w.beat)
	defer tick.Stop()
	select {
	case <-ctx.Done():
		warm.Stop()
		return w.leave()
	case <-warm.C:
	}
	w.mu.Lock()
	w.ready = true
	w.mu.Unlock()
	var statusAt time.Time
	for {
		now := time.Now()
		w.evaluate(ctx, now)
		w.announce(false)
		if now.Sub(statusAt) >= statusEvery {
			w.putStatus("online")
			statusAt = now
		}
		if err := w.twinErr(); err != nil {
			_ = w.leave()
			return err
		}
		select {
		case <-ctx.Done():
			return w.leave()
		case <-tick.C:
		}
	}
}

func (w *Worker) twinErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.twin
}

// heard takes note of a worker's announcement.
func (w *Worker) heard(m *nats.Msg) {
	a, ok := parseAnnouncement(m.Data)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if a.Node == w.o.Node {
		if a.Inc != w.inc && !a.Leaving && w.twin == nil {
			w.twin = fmt.Errorf("another live worker uses node id %q: give each worker its own --node", a.Node)
		}
		return
	}
	if a.Leaving && len(a.Holds) == 0 {
		delete(w.peers, a.Node)
		return
	}
	w.peers[a.Node] = peer{inc: a.Inc, seen: time.Now(), holds: a.Holds, leaving: a.Leaving}
}

func (w *Worker) announce(leaving bool) {
	w.mu.Lock()
	a := announcement{Node: w.o.Node, Inc: w.inc, Holds: w.holdsLocked(), Leaving: leaving}
	w.mu.Unlock()
	if b, err := json.Marshal(a); err == nil {
		_ = w.o.Conn.Publish(w.names.MembersSubject(), b)
	}
}

// evaluate starts the partitions this worker should own and lets go of
// those it should not, and takes over partitions whose owner is gone.
func (w *Worker) evaluate(ctx context.Context, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	dead := deadAfterBeats * w.beat
	live := []string{w.o.Node}
	heldByOthers := map[int]bool{}
	for node, p := range w.peers {
		if now.Sub(p.seen) > dead {
			delete(w.peers, node)
			w.log.Info("worker gone", "node", node)
			continue
		}
		for _, k := range p.holds {
			heldByOthers[k] = true
		}
		if !p.leaving {
			live = append(live, node)
		}
	}
	for k := range w.o.Partitions {
		mine := owner(live, k) == w.o.Node
		pt := w.parts[k]
		switch {
		case mine && pt == nil:
			pt = w.startPartition(ctx, k)
			w.parts[k] = pt
		case !mine && pt != nil && !pt.letGo():
			pt.release()
		}
		if pt := w.parts[k]; pt != nil && mine && !heldByOthers[k] {
			pt.orphaned()
		}
	}
	serving := 0
	for _, pt := range w.parts {
		if !pt.letGo() {
			serving++
		}
	}
	w.o.Metrics.Group(serving, 0)
}

// owner is the rendezvous owner of partition k among nodes.
func owner(nodes []string, k int) string {
	var best string
	var bestScore uint64
	for _, n := range nodes {
		if s := score(n, k); best == "" || s > bestScore || s == bestScore && n < best {
			best, bestScore = n, s
		}
	}
	return best
}

func score(node string, k int) uint64 {
	return topics.Hash(node, string([]byte{byte(k >> 8), byte(k)}))
}

// leave stops taking requests, lets the ones taken finish and hands every
// partition over.
func (w *Worker) leave() error {
	w.mu.Lock()
	for _, pt := range w.parts {
		pt.release()
	}
	w.mu.Unlock()
	w.announce(true)
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	t := time.NewTicker(w.beat)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-t.C:
			w.announce(true)
		}
	}
	w.announce(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := w.o.Pool.Stop(ctx)
	w.putStatus("offline")
	return err
}

// putStatus stores the worker's status in the status bucket.
func (w *Worker) putStatus(state string) {
	if w.status == nil {
		return
	}
	holds := w.Holds()
	st := worker.Status{
		Node:        w.o.Node,
		State:       state,
		Version:     w.o.Version,
		Transport:   "cluster",
		QueueDepth:  w.o.Pool.QueueDepth(),
		Since:       w.since,
		Partitions:  &worker.GroupState{Count: w.o.Partitions, Claimed: holds, Serving: len(holds)},
		Incarnation: w.inc,
		At:          time.Now().UnixMilli(),
	}
	if w.o.Admission != nil && w.o.Admission.Models != nil {
		st.Models = w.o.Admission.Models()
	}
	if state == "offline" {
		st.Since = time.Now().UTC().Format(time.RFC3339)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := putStatus(ctx, w.status, st); err != nil {
		w.log.Warn("status not stored", "error", err)
	}
}

// dropped is called by a partition's goroutine when it has let go.
func (w *Worker) dropped(pt *partition) {
	w.mu.Lock()
	if w.parts[pt.k] == pt {
		delete(w.parts, pt.k)
	}
	w.mu.Unlock()
}

// partition is one partition this worker holds: it pulls its requests
// (once pinned), runs them and acknowledges each after its result is in
// the result stream.
type partition struct {
	w    *Worker
	k    int
	cons jetstream.Consumer

	mu       sync.Mutex
	going    bool   // letting go: pulls no more, finishes what it took
	pinned   bool   // has had a request under its pin
	pin      string // the pin its requests come under
	unpinned bool   // unpinned a gone owner's pin already
	dseq     uint64 // the consumer's number of the last delivery here
	reset    bool   // the consumer was reset: its next delivery is number 1
	it       jetstream.MessagesContext
	inflight map[uint64]jetstream.Msg // by stream sequence: taken, not acked
	idle     chan struct{}            // signalled when inflight empties
	wake     chan struct{}            // signalled by release
}

func (w *Worker) startPartition(ctx context.Context, k int) *partition {
	pt := &partition{w: w, k: k, inflight: map[uint64]jetstream.Msg{}, idle: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
	w.wg.Go(func() { pt.run(ctx) })
	return pt
}

func (pt *partition) letGo() bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.going
}

// release makes the partition pull no more, finish what it took and
// unpin itself.
func (pt *partition) release() {
	pt.mu.Lock()
	pt.going = true
	it := pt.it
	pt.mu.Unlock()
	if it != nil {
		it.Stop()
	}
	pt.signal()
}

func (pt *partition) signal() {
	select {
	case pt.wake <- struct{}{}:
	default:
	}
}

// orphaned is called while no other live worker holds the partition: a
// pin that is not this worker's belongs to a worker that is gone, and is
// taken away from it at once instead of after its TTL.
func (pt *partition) orphaned() {
	pt.mu.Lock()
	if pt.pinned || pt.unpinned || pt.going {
		pt.mu.Unlock()
		return
	}
	pt.unpinned = true
	pt.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var info *jetstream.ConsumerInfo
		cons, err := pt.w.reqs.Consumer(ctx, pt.w.names.Consumer(pt.k))
		if err == nil {
			info, err = cons.Info(ctx)
		}
		if err != nil {
			pt.w.log.Debug("partition info", "partition", pt.k, "error", err)
			pt.mu.Lock()
			pt.unpinned = false
			pt.mu.Unlock()
			return
		}
		for _, g := range info.PriorityGroups {
			if g.Group == priorityGroup && g.PinnedClientID != "" && !pt.isPinned() {
				if err := pt.w.reqs.UnpinConsumer(ctx, pt.w.names.Consumer(pt.k), priorityGroup); err != nil {
					pt.w.log.Debug("unpin", "partition", pt.k, "error", err)
				} else {
					pt.w.log.Info("partition taken over from a worker that is gone", "partition", pt.k)
				}
			}
		}
	}()
}

func (pt *partition) isPinned() bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.pinned
}

// run pulls and serves the partition until it is let go.
func (pt *partition) run(ctx context.Context) {
	w := pt.w
	defer w.dropped(pt)
	var err error
	for pt.cons == nil {
		if pt.cons, err = w.reqs.Consumer(ctx, w.names.Consumer(pt.k)); err != nil {
			w.log.Warn("partition consumer", "partition", pt.k, "error", err)
			if !pt.pause(ctx, time.Second) {
				pt.finish()
				return
			}
		}
	}
	stop := make(chan struct{})
	defer close(stop)
	go pt.keepAlive(stop)
	for !pt.letGo() {
		it, err := pt.cons.Messages(jetstream.PullPriorityGroup(priorityGroup), jetstream.PullExpiry(pullExpiry),
			jetstream.PullMaxMessages(maxAckPending/2))
		if err != nil {
			w.log.Warn("pull partition", "partition", pt.k, "error", err)
			if !pt.pause(ctx, time.Second) {
				break
			}
			continue
		}
		pt.mu.Lock()
		pt.it = it
		going := pt.going
		pt.mu.Unlock()
		if going {
			it.Stop()
			break
		}
		pt.pull(ctx, it)
		it.Stop()
	}
	pt.finish()
}

// keepAlive tells the server, every third of the ack wait, that the
// requests taken are still being worked on (a chat or a long stream), so
// that it does not give them to another worker.
func (pt *partition) keepAlive(stop chan struct{}) {
	t := time.NewTicker(ackWait / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		pt.mu.Lock()
		msgs := make([]jetstream.Msg, 0, len(pt.inflight))
		for _, m := range pt.inflight {
			msgs = append(msgs, m)
		}
		pt.mu.Unlock()
		for _, m := range msgs {
			_ = m.InProgress()
		}
	}
}

// pause waits d, or less when the partition is let go or ctx ends; it
// reports whether the partition is still to be served.
func (pt *partition) pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-pt.wake:
	case <-ctx.Done():
		return false
	}
	return !pt.letGo()
}

// pull serves the messages of one pull iterator until it stops (let go)
// or the partition's first pin makes it start over from the ack floor.
func (pt *partition) pull(ctx context.Context, it jetstream.MessagesContext) {
	w := pt.w
	for {
		msg, err := it.Next()
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				// The next iterator pulls afresh (after a consumer's leader
				// moved, a pin changed, a server went away).
				w.log.Debug("pull", "partition", pt.k, "error", err)
				pt.pause(ctx, 100*time.Millisecond)
			}
			return
		}
		meta, err := msg.Metadata()
		if err != nil {
			_ = msg.Term()
			continue
		}
		pin, dseq := msg.Headers().Get("Nats-Pin-Id"), meta.Sequence.Consumer
		pt.mu.Lock()
		changed := pin != pt.pin
		// The consumer numbers its deliveries (from 1 again after a reset),
		// and all of them come here (pinned): one that skips a number went
		// somewhere else, to a pull of this worker that was stopped (its
		// unsubscribe still on its way) or on a NATS server that died.
		skipped := (pt.dseq != 0 || pt.reset) && dseq != pt.dseq+1
		pt.dseq, pt.reset = dseq, false
		pt.mu.Unlock()
		if changed || skipped {
			// A new pin: this worker has just become the partition's owner,
			// or the consumer's leader moved (a NATS server went away) and
			// pinned it again. Whatever the previous owner took and did not
			// acknowledge, and whatever a lost server delivered and never
			// got here, is run again now, first and in order, rather than
			// when its ack wait ends: the requests this worker took finish,
			// then the consumer starts over from its ack floor.
			if skipped && !changed {
				w.log.Info("partition's deliveries skipped ahead: starting over from its ack floor", "partition", pt.k, "delivery", dseq)
			}
			it.Stop()
			pt.drain()
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := w.reqs.ResetConsumer(rctx, w.names.Consumer(pt.k))
			cancel()
			if err != nil {
				w.log.Warn("reset partition to its ack floor", "partition", pt.k, "error", err)
				pt.mu.Lock()
				pt.pin = "" // the next request tries again
				pt.mu.Unlock()
				return
			}
			pt.mu.Lock()
			pt.pin, pt.pinned, pt.dseq, pt.reset = pin, true, 0, true
			pt.mu.Unlock()
			w.log.Debug("partition pinned", "partition", pt.k, "pin", pin)
			return
		}
		pt.serve(msg, meta)
	}
}

// serve runs one request message.
func (pt *partition) serve(msg jetstream.Msg, meta *jetstream.MsgMetadata) {
	w := pt.w
	r, key, err := parseRequest(w.o.Prefix, natsMsg(msg))
	if err != nil {
		w.o.Metrics.Rejected("bad_message")
		w.log.Warn("request message dropped", "partition", pt.k, "error", err)
		_ = msg.Term()
		return
	}
	if w.done.has(key) {
		// Run here already, its result stored: the ack was lost.
		w.o.Metrics.Duplicate()
		if err := msg.Ack(); err != nil {
			w.log.Debug("ack", "partition", pt.k, "error", err)
		}
		return
	}
	pt.mu.Lock()
	pt.inflight[meta.Sequence.Stream] = msg
	pt.mu.Unlock()
	out := &replier{pt: pt, r: r, key: key, msg: msg, seq: meta.Sequence.Stream,
		subject: w.names.ResultSubject(r.Topic.Device)}
	if e := w.o.Admission.Admit(r); e != nil {
		out.reject(e)
		return
	}
	if r.Body.Cancel {
		if !w.o.Pool.Cancel(r.Topic.Device, r.Body.ID) {
			out.reject(api.Errorf(api.InvalidRequest, "no queued or running request with id %q to cancel", r.Body.ID))
			return
		}
		out.acked()
		return
	}
	if err := w.o.Pool.Serve(r, out, worker.Task{}); err != nil {
		// The pool is stopping (its queue holds every request the
		// partitions can have unacknowledged): the partition's next owner
		// runs the request.
		_ = msg.Nak()
		pt.done(meta.Sequence.Stream)
	}
}

// natsMsg is a consumed message's headers and body as a *nats.Msg.
func natsMsg(m jetstream.Msg) *nats.Msg {
	return &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}
}

// drain waits until the requests taken are acknowledged (or given up).
func (pt *partition) drain() {
	for {
		pt.mu.Lock()
		n := len(pt.inflight)
		pt.mu.Unlock()
		if n == 0 {
			return
		}
		<-pt.idle
	}
}

// finish waits for the requests taken to be acknowledged, then unpins the
// partition, so that its next owner takes over without waiting.
func (pt *partition) finish() {
	pt.drain()
	pt.mu.Lock()
	pinned := pt.pinned
	pt.mu.Unlock()
	if pinned && pt.w.reqs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := pt.w.reqs.UnpinConsumer(ctx, pt.w.names.Consumer(pt.k), priorityGroup); err != nil {
			pt.w.log.Debug("unpin on letting go", "partition", pt.k, "error", err)
		}
		cancel()
	}
}

// done forgets an acknowledged (or given up) message.
func (pt *partition) done(seq uint64) {
	pt.mu.Lock()
	delete(pt.inflight, seq)
	empty := len(pt.inflight) == 0
	pt.mu.Unlock()
	if empty {
		select {
		case pt.idle <- struct{}{}:
		default:
		}
	}
}

// replier publishes the replies of one request to the result stream and
// acknowledges the request once its final reply is stored there.
type replier struct {
	pt      *partition
	r       *pipeline.Request
	key     string
	msg     jetstream.Msg
	seq     uint64
	subject string
	n       int
}

func (o *replier) Send(p pipeline.Reply, qos byte) error {
	m := resultMsg(o.subject, o.r, o.key, o.n, p, qos)
	o.n++
	js := o.pt.w.js
	if !p.Final() {
		_, err := js.PublishMsgAsync(m)
		return err
	}
	if _, err := publishAck(js, m, 30*time.Second); err != nil {
		// Not acknowledged: the request is run again after its ack wait.
		o.pt.w.o.Metrics.Dropped()
		o.pt.done(o.seq)
		return err
	}
	o.pt.w.done.add(o.key)
	o.acked()
	return nil
}

// acked acknowledges the request.
func (o *replier) acked() {
	if err := o.msg.Ack(); err != nil {
		o.pt.w.log.Debug("ack", "partition", o.pt.k, "error", err)
	}
	o.pt.done(o.seq)
}

// reject answers the request with an error and acknowledges it.
func (o *replier) reject(e *api.Error) {
	reply, err := o.pt.w.o.Admission.ErrorReply(o.r, e)
	if err != nil {
		o.pt.w.log.Error("encode reply", "error", err)
		o.acked()
		return
	}
	_ = o.Send(reply, o.r.QoS)
}

// randomHex returns n random bytes as 2n hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
