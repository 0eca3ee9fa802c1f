package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/pipeline"
)

// publishTimeout bounds how long an edge tries to put a request into the
// request stream (while a NATS server is replaced and a stream elects a
// new leader) before it answers 503; the device waits that long for its
// PUBACK at most.
const publishTimeout = 10 * time.Second

// Broker is what an edge needs of the embedded broker: a way to publish
// replies to the clients connected to it.
type Broker interface {
	Send(p pipeline.Reply, qos byte) error
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
type Edge struct {
	o     EdgeOptions
	names Names
	inc   string
	js    jetstream.JetStream
	log   *slog.Logger
	n     atomic.Uint64 // numbers the requests without an id

	mu      sync.Mutex
	pending map[string]held // accepted here, not answered yet, by key
	workers map[string]time.Time
	started bool
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
		pending: map[string]held{}, workers: map[string]time.Time{}}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	return e, nil
}

// Setup creates or checks the service's streams, waiting (until ctx ends)
// for the NATS cluster to be ready.
func (e *Edge) Setup(ctx context.Context) error {
	o, err := setupRetry(ctx, e.o.Conn, e.js, e.o.Options, e.log)
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
	m := requestMsg(e.names.RequestSubject(Partition(r.Topic.Device, e.o.Partitions)), r, key, e.o.Node)
	if r.Body.Cancel {
		defer r.Done()
	}
	ack, err := publishAck(e.js, m, publishTimeout)
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
func publishAck(js jetstream.JetStream, m *nats.Msg, total time.Duration) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(context.Background(), total)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err := js.PublishMsg(actx, m)
		acancel()
		if err == nil {
			return ack, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

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
	defer wg.Wait()
	for ctx.Err() == nil {
		if err := e.pump(ctx, b); err != nil && ctx.Err() == nil {
			e.log.Warn("result stream", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// pump publishes the results of the result stream, from the first one
// stored after it starts, in order.
func (e *Edge) pump(ctx context.Context, b Broker) error {
	cons, err := e.js.OrderedConsumer(ctx, e.names.ResultStream(), jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy,
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
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			e.log.Debug("result stream", "error", err)
			continue
		}
		res, err := parseResult(msg)
		if err != nil {
			e.log.Warn("result message dropped", "subject", msg.Subject(), "error", err)
			continue
		}
		if err := b.Send(res.reply, res.qos); err != nil {
			e.log.Debug("publish result", "topic", res.reply.Topic, "error", err)
		}
		if res.reply.Final() {
			e.answered(res.key)
		}
	}
}

// answered gives back the in-flight slot of a request accepted here.
func (e *Edge) answered(key string) {
	e.mu.Lock()
	h, ok := e.pending[key]
	delete(e.pending, key)
	e.mu.Unlock()
	if ok {
		h.r.Done()
	}
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
