package worker

import (
	"context"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Publisher sends a message from the service; *broker.Broker is one.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Pool is the in-process transport: the embedded broker's request hook hands
// accepted requests to Dispatch, a bounded queue, and a fixed set of worker
// goroutines runs them through the Core and publishes the replies through
// the broker's inline client: no second network hop.
type Pool struct {
	core    *Core
	workers int
	queue   chan *broker.Request

	mu     sync.RWMutex // guards closed against Dispatch sending on a closed queue
	closed bool
	pub    Publisher
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// NewPool creates a pool of workers goroutines with a queue of queueSize
// requests. It runs nothing until Start.
func NewPool(core *Core, workers, queueSize int) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{
		core:    core,
		workers: max(workers, 1),
		queue:   make(chan *broker.Request, max(queueSize, 1)),
		ctx:     ctx,
		cancel:  cancel,
	}
}

// Start starts the workers; replies go out through pub.
func (p *Pool) Start(pub Publisher) {
	p.pub = pub
	for range p.workers {
		p.wg.Add(1)
		go p.work()
	}
	p.core.Metrics.WorkerUp("in_process", true)
}

// Dispatch queues a request without blocking. A full queue, or a pool that
// is stopping, is an *api.Error of type overloaded (503): the service's
// capacity, not the device's fault.
func (p *Pool) Dispatch(r *broker.Request) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return api.Errorf(api.Overloaded, "the service is shutting down")
	}
	select {
	case p.queue <- r:
		p.core.Metrics.QueueDepth(1)
		return nil
	default:
		return api.Errorf(api.Overloaded, "the request queue is full (%d waiting); retry later", cap(p.queue))
	}
}

// Stop stops intake, lets the workers finish every queued and running
// request, and waits for them. If ctx ends first, running models are
// canceled (their requests are still answered) and Stop returns ctx's error
// once the workers are gone.
func (p *Pool) Stop(ctx context.Context) error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.queue)
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		p.cancel()
		<-done
	}
	p.cancel()
	p.core.Metrics.WorkerUp("in_process", false)
	return err
}

func (p *Pool) work() {
	defer p.wg.Done()
	for r := range p.queue {
		p.core.Metrics.QueueDepth(-1)
		p.handle(r)
	}
}

func (p *Pool) handle(r *broker.Request) {
	defer r.Done()
	p.core.Metrics.QueueWait(time.Since(r.Received).Seconds())
	p.core.Metrics.Busy(1)
	res := p.core.Run(p.ctx, Job{
		Version:   r.Topic.Version,
		Device:    r.Topic.Device,
		Model:     r.Topic.Model,
		Request:   r.Body,
		Received:  r.Received,
		RateLimit: r.RateLimit,
	})
	p.core.Metrics.Busy(-1)
	p.core.Metrics.Request(r.Topic.Version, r.Topic.Model, res.Status)
	payload, err := api.Marshal(r.Topic.Version, res)
	if err != nil {
		p.core.log().Error("encode result", "error", err)
		return
	}
	topic := topics.Result(r.Topic.Prefix, r.Topic.Version, r.Topic.Device, r.Topic.Model)
	if err := p.pub.Publish(topic, payload, false, r.QoS); err != nil {
		p.core.log().Warn("publish result", "topic", topic, "error", err)
	}
}

// QueueDepth is the number of requests waiting for a worker.
func (p *Pool) QueueDepth() int { return len(p.queue) }
