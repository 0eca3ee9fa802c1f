package worker

import (
	"context"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
)

// Replier sends the replies of requests over MQTT; *broker.Broker is one
// (the embedded broker), the remote worker's connection another.
type Replier interface {
	Send(reply pipeline.Reply, qos byte) error
}

// Task is one request for the pool, from whichever front door: the job and
// where its replies go.
type Task struct {
	Job Job
	// Context, when set, ends the request early when it ends (an HTTP client
	// that went away): the model is stopped and the request counted 499.
	Context context.Context
	// Result receives the reply of a request that is not streamed.
	Result func(api.Result)
	// Event receives every event of a streamed request (the model streams
	// and the request asked for it), the final done or error event last.
	Event func(api.StreamEvent)
	// Done, when set, is called once after the last reply.
	Done func()
	// Settle, when set, is called with the share of its up-front cost a
	// request really used, for models whose output is metered.
	Settle func(share float64)
	// Skip, when set, is called when the request's turn comes, before it
	// runs; when it returns true the request is not run (Skip has answered
	// it, from a cache of replies) and only Done is called.
	Skip func() bool
}

// lane keeps one device's requests for one model in arrival order: a worker
// that runs a request runs the ones queued behind it next. Models that carry
// state per device (a stream of audio chunks, a telemetry series) see a
// device's requests in the order it sent them.
type lane struct{ next []*task }

type task struct {
	Task
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool // unregisters the watch on Task.Context
	key    string      // cancel key
	lane   string      // lane key
}

// Pool runs requests on a fixed set of worker goroutines fed by a bounded
// queue. It is the in-process transport of the embedded broker (Dispatch:
// no second network hop, replies leave through the broker's inline client)
// and the engine behind the HTTP gateway (Submit): one path, two front doors.
type Pool struct {
	// Transport names the pool in the mqttinfer_worker_up metric while it
	// runs ("in_process": it serves the embedded broker's requests; "http":
	// only the gateway's); "" reports nothing (the remote worker reports
	// its connection instead).
	Transport string

	core    *Core
	workers int
	queue   chan *task

	mu      sync.Mutex // guards closed (against sends on a closed queue), running, lanes and waiting
	closed  bool
	running map[string]*task // by device and request id, for Cancel
	lanes   map[string]*lane // by device and model: requests behind the one a worker runs
	waiting int              // tasks queued or in a lane, not yet running

	replier Replier
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
}

// NewPool creates a pool of workers goroutines with a queue of queueSize
// requests. It runs nothing until Start.
func NewPool(core *Core, workers, queueSize int) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{
		core:    core,
		workers: max(workers, 1),
		queue:   make(chan *task, max(queueSize, 1)),
		running: make(map[string]*task),
		lanes:   make(map[string]*lane),
		ctx:     ctx,
		cancel:  cancel,
	}
}

// Start starts the workers; replies to broker requests go out through r
// (nil when the pool only serves Submit).
func (p *Pool) Start(r Replier) {
	p.replier = r
	for range p.workers {
		p.wg.Add(1)
		go p.work()
	}
	if p.Transport != "" {
		p.core.Metrics.WorkerUp(p.Transport, true)
	}
}

// Core is the core the pool runs requests on.
func (p *Pool) Core() *Core { return p.core }

// Submit queues a task without blocking. A full queue, or a pool that is
// stopping, is an *api.Error of type overloaded (503): the service's
// capacity, not the client's fault.
func (p *Pool) Submit(t Task) error {
	tk := &task{Task: t, key: cancelKey(t.Job.Device, t.Job.Request.ID), lane: laneKey(t.Job.Device, t.Job.Model)}
	tk.ctx, tk.cancel = context.WithCancelCause(p.ctx)
	tk.stop = func() bool { return false }
	if t.Context != nil {
		tk.stop = context.AfterFunc(t.Context, func() { tk.cancel(errCanceledByDevice) })
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		tk.stop()
		tk.cancel(nil)
		return api.Errorf(api.Overloaded, "the service is shutting down")
	}
	full := func() error {
		tk.stop()
		tk.cancel(nil)
		return api.Errorf(api.Overloaded, "the request queue is full (%d waiting); retry later", cap(p.queue))
	}
	if p.waiting >= cap(p.queue) {
		return full()
	}
	if l, busy := p.lanes[tk.lane]; busy {
		l.next = append(l.next, tk)
	} else {
		select {
		case p.queue <- tk:
			p.lanes[tk.lane] = &lane{}
		default:
			return full()
		}
	}
	p.waiting++
	if _, dup := p.running[tk.key]; !dup {
		p.running[tk.key] = tk
	}
	p.core.Metrics.QueueDepth(1)
	return nil
}

func laneKey(device, model string) string { return device + "\x00" + model }

// Cancel cancels the queued or running request id of device; the request
// is answered 499 canceled. It reports whether there was such a request.
func (p *Pool) Cancel(device, id string) bool {
	p.mu.Lock()
	tk, ok := p.running[cancelKey(device, id)]
	p.mu.Unlock()
	if ok {
		tk.cancel(errCanceledByDevice)
	}
	return ok
}

func cancelKey(device, id string) string { return device + "\x00" + id }

// Dispatch takes a request from the embedded broker (broker.Dispatcher):
// its replies go out through the Replier given to Start.
func (p *Pool) Dispatch(r *pipeline.Request) error { return p.Serve(r, p.replier, Task{}) }

// Serve queues a request that came over MQTT, from any transport: its
// replies (a result, or stream events) are encoded for it
// (pipeline.Request.Reply) and sent through out, and its throttle is
// settled and released (r.Done) when it ends. extra may set Context, Skip
// and Done (called after r.Done). A full queue is an error, as for Submit;
// the caller then refunds and releases r.
func (p *Pool) Serve(r *pipeline.Request, out Replier, extra Task) error {
	send := func(v any, status int) {
		reply, err := r.Reply(v, status)
		if err != nil {
			p.core.log().Error("encode reply", "error", err)
			return
		}
		if err := out.Send(reply, r.QoS); err != nil {
			p.core.log().Warn("publish reply", "device", r.Device(), "error", err)
		}
	}
	t := extra
	t.Job = Job{
		Version:   r.Topic.Version,
		Device:    r.Device(),
		Model:     r.Topic.Model,
		Request:   r.Body,
		Received:  r.Received,
		RateLimit: r.RateLimit,
	}
	t.Result = func(res api.Result) { send(res, res.Status) }
	t.Event = func(ev api.StreamEvent) { send(ev, ev.Status) }
	t.Settle = r.Settle
	done := extra.Done
	t.Done = func() {
		r.Done()
		if done != nil {
			done()
		}
	}
	return p.Submit(t)
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
	if p.Transport != "" {
		p.core.Metrics.WorkerUp(p.Transport, false)
	}
	return err
}

// QueueDepth is the number of requests waiting for a worker.
func (p *Pool) QueueDepth() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting
}

func (p *Pool) work() {
	defer p.wg.Done()
	for tk := range p.queue {
		for tk != nil {
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			p.core.Metrics.QueueDepth(-1)
			p.handle(tk)
			tk = p.nextInLane(tk.lane)
		}
	}
}

// nextInLane returns the request queued behind the one just finished in its
// lane, or closes the lane.
func (p *Pool) nextInLane(key string) *task {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.lanes[key]
	if l == nil || len(l.next) == 0 {
		delete(p.lanes, key)
		return nil
	}
	tk := l.next[0]
	l.next[0] = nil
	l.next = l.next[1:]
	return tk
}

func (p *Pool) handle(tk *task) {
	defer func() {
		p.mu.Lock()
		if p.running[tk.key] == tk {
			delete(p.running, tk.key)
		}
		p.mu.Unlock()
		tk.stop()
		tk.cancel(nil)
		if tk.Done != nil {
			tk.Done()
		}
	}()
	j := tk.Job
	if tk.Skip != nil && tk.Skip() {
		return
	}
	p.core.Metrics.QueueWait(time.Since(j.Received).Seconds())
	p.core.Metrics.Busy(1)
	defer p.core.Metrics.Busy(-1)
	var status int
	var share float64
	if tk.Event != nil && p.core.Streams(j) {
		var final api.StreamEvent
		final, share = p.core.RunStream(tk.ctx, j, tk.Event)
		status = final.Status
	} else {
		var res api.Result
		res, share = p.core.Do(tk.ctx, j)
		status = res.Status
		if tk.Result != nil {
			tk.Result(res)
		}
	}
	p.core.Metrics.Request(j.Version, j.Model, status)
	if share >= 0 && tk.Settle != nil {
		tk.Settle(share)
	}
}

// Held counts the per-device structures of the pool: lanes (a device and
// model with requests queued behind a running one) and running requests.
func (p *Pool) Held() (lanes, running int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lanes), len(p.running)
}
