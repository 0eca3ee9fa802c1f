// Package batch owns dynamic batching: it gathers concurrent requests into
// one call of a batch function (one model Run over a batch tensor) and hands
// each caller its own result. It knows nothing of models or runtimes.
//
// A request waits at most Options.MaxDelay for others to join it, or less
// when MaxBatch requests are already waiting. While every worker is busy the
// waiting batch keeps filling up to MaxBatch, so under load batches are full
// and at low load a lone request pays at most MaxDelay.
//
// Each request keeps its own context: a request whose context is done
// before its batch runs is left out of the batch and gets ctx.Err(); a
// request whose context ends while its batch runs returns ctx.Err() at once
// (the batch still completes for the others). The run function's context is
// canceled only when every member of its batch has given up.
//
// Errors: run returns one error for the whole batch, which every member
// gets, or an [Errors] value with one entry per item, in which case each
// member gets its own entry (nil means its output is valid).
package batch

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Do after Close.
var ErrClosed = errors.New("batch: batcher is closed")

// Errors is an error a run function returns to fail some items of a batch
// and not others: it has one entry per item, nil for the items whose
// output is valid. Do hands each member its own entry.
type Errors []error

func (e Errors) Error() string {
	n := 0
	var first error
	for _, err := range e {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	if first == nil {
		return "batch: no item failed"
	}
	return fmt.Sprintf("batch: %d of %d items failed, the first: %v", n, len(e), first)
}

// Options configure a Batcher. The zero value means no waiting, batches of
// DefaultMaxBatch and one worker per CPU.
type Options struct {
	// MaxBatch is the most requests in one run call. 1 turns batching off:
	// Do then calls run directly with one item (at most Workers at a time).
	// 0 or less means DefaultMaxBatch.
	MaxBatch int
	// MaxDelay is the longest the first request of a batch waits for
	// others to join before the batch is handed to a worker. 0 hands it
	// over as soon as a worker is free (a batch still grows while every
	// worker is busy). Negative means 0.
	MaxDelay time.Duration
	// Workers is the most run calls in flight at once. 0 or less means
	// runtime.GOMAXPROCS(0).
	Workers int
}

// DefaultMaxBatch is Options.MaxBatch when it is not set.
const DefaultMaxBatch = 8

// Stats count what a Batcher has done.
type Stats struct {
	// Batches is the number of run calls made.
	Batches uint64
	// Items is the number of items passed to run calls (Items/Batches is
	// the mean batch size).
	Items uint64
	// Dropped is the number of requests left out of their batch because
	// their context was done before it ran.
	Dropped uint64
	// Waiting is the number of requests taken and not yet handed to a
	// worker (the batch being gathered; without batching, the callers
	// waiting for a free worker): the queue depth.
	Waiting int64
}

// Batcher gathers requests into batches for a run function. It is safe for
// concurrent use. Create it with New and stop it with Close.
type Batcher[In, Out any] struct {
	opts Options
	run  func(ctx context.Context, in []In) ([]Out, error)

	mu     sync.RWMutex // guards closed against sends on reqs
	closed bool
	reqs   chan *request[In, Out]
	work   chan []*request[In, Out]
	wg     sync.WaitGroup // the collector and the workers, or passthrough calls

	sem chan struct{} // passthrough only: limits concurrent run calls

	batches, items, dropped atomic.Uint64
	waiting                 atomic.Int64
}

type request[In, Out any] struct {
	ctx  context.Context
	in   In
	done chan result[Out] // buffered: a worker never blocks on a caller that left
}

type result[Out any] struct {
	out Out
	err error
}

// New returns a Batcher that calls run with batches of at most
// opts.MaxBatch items. run must return exactly one output per input, in
// order, or an error (see Errors); it may be called from Workers goroutines
// at once. A panic in run is recovered and becomes every member's error.
func New[In, Out any](opts Options, run func(ctx context.Context, in []In) ([]Out, error)) *Batcher[In, Out] {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.MaxDelay < 0 {
		opts.MaxDelay = 0
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	b := &Batcher[In, Out]{opts: opts, run: run}
	if opts.MaxBatch == 1 {
		b.sem = make(chan struct{}, opts.Workers)
		return b
	}
	b.reqs = make(chan *request[In, Out])
	b.work = make(chan []*request[In, Out])
	b.wg.Add(1 + opts.Workers)
	go b.collect()
	for range opts.Workers {
		go b.worker()
	}
	return b
}

// Options returns the options in effect, defaults filled in.
func (b *Batcher[In, Out]) Options() Options { return b.opts }

// Stats returns the counts so far.
func (b *Batcher[In, Out]) Stats() Stats {
	return Stats{Batches: b.batches.Load(), Items: b.items.Load(), Dropped: b.dropped.Load(), Waiting: b.waiting.Load()}
}

// Do runs in as part of a batch and returns its output. It returns
// ctx.Err() as soon as ctx is done, ErrClosed after Close, and otherwise
// the batch's error or the item's own (see Errors).
func (b *Batcher[In, Out]) Do(ctx context.Context, in In) (Out, error) {
	var zero Out
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if b.sem != nil {
		return b.passthrough(ctx, in)
	}
	r := &request[In, Out]{ctx: ctx, in: in, done: make(chan result[Out], 1)}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return zero, ErrClosed
	}
	select {
	case b.reqs <- r:
		b.mu.RUnlock()
	case <-ctx.Done():
		b.mu.RUnlock()
		return zero, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.out, res.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// passthrough is Do without batching: the caller's goroutine runs one item.
func (b *Batcher[In, Out]) passthrough(ctx context.Context, in In) (Out, error) {
	var zero Out
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return zero, ErrClosed
	}
	b.wg.Add(1)
	b.mu.RUnlock()
	defer b.wg.Done()
	b.waiting.Add(1)
	select {
	case b.sem <- struct{}{}:
		b.waiting.Add(-1)
	case <-ctx.Done():
		b.waiting.Add(-1)
		return zero, ctx.Err()
	}
	defer func() { <-b.sem }()
	if err := ctx.Err(); err != nil { // both cases may have been ready
		b.dropped.Add(1)
		return zero, err
	}
	r := &request[In, Out]{ctx: ctx, in: in, done: make(chan result[Out], 1)}
	b.runBatch([]*request[In, Out]{r})
	res := <-r.done
	return res.out, res.err
}

// Close stops taking requests (Do returns ErrClosed), runs the requests
// already taken, waits for every run call to return, and stops the
// goroutines. It is safe to call more than once.
func (b *Batcher[In, Out]) Close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		if b.reqs != nil {
			close(b.reqs)
		}
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// collect gathers requests into batches and hands them to the workers.
func (b *Batcher[In, Out]) collect() {
	defer b.wg.Done()
	defer close(b.work)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		first, ok := <-b.reqs
		if !ok {
			return
		}
		b.waiting.Add(1)
		batch := make([]*request[In, Out], 1, b.opts.MaxBatch)
		batch[0] = first
		open := true
		// Wait up to MaxDelay for the batch to fill.
		if b.opts.MaxDelay > 0 {
			timer.Reset(b.opts.MaxDelay)
		fill:
			for len(batch) < b.opts.MaxBatch {
				select {
				case r, ok := <-b.reqs:
					if !ok {
						open = false
						break fill
					}
					b.waiting.Add(1)
					batch = append(batch, r)
				case <-timer.C:
					break fill
				}
			}
			timer.Stop()
		}
		// Hand it over; until a worker takes it, let it grow.
		for {
			in := b.reqs
			if len(batch) == b.opts.MaxBatch || !open {
				in = nil
			}
			select {
			case b.work <- batch:
				b.waiting.Add(-int64(len(batch)))
			case r, ok := <-in:
				if !ok {
					open = false
				} else {
					b.waiting.Add(1)
					batch = append(batch, r)
				}
				continue
			}
			break
		}
		if !open {
			return
		}
	}
}

func (b *Batcher[In, Out]) worker() {
	defer b.wg.Done()
	for batch := range b.work {
		b.runBatch(batch)
	}
}

// runBatch runs the members whose context is still live and answers every member.
func (b *Batcher[In, Out]) runBatch(batch []*request[In, Out]) {
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			b.dropped.Add(1)
			r.done <- result[Out]{err: err}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	ins := make([]In, len(live))
	for i, r := range live {
		ins[i] = r.in
	}
	// The run's context ends when every member has given up.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var left atomic.Int64
	left.Store(int64(len(live)))
	stops := make([]func() bool, len(live))
	for i, r := range live {
		stops[i] = context.AfterFunc(r.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	outs, err := b.call(ctx, ins)
	for _, stop := range stops {
		stop()
	}
	b.batches.Add(1)
	b.items.Add(uint64(len(live)))

	var itemErrs Errors
	if errors.As(err, &itemErrs) && len(itemErrs) != len(live) {
		err = fmt.Errorf("batch: run returned %d item errors for %d items", len(itemErrs), len(live))
		itemErrs = nil
	}
	if err == nil && len(outs) != len(live) {
		err = fmt.Errorf("batch: run returned %d outputs for %d items", len(outs), len(live))
	}
	for i, r := range live {
		switch {
		case itemErrs != nil && itemErrs[i] != nil:
			r.done <- result[Out]{err: itemErrs[i]}
		case itemErrs != nil && len(outs) == len(live):
			r.done <- result[Out]{out: outs[i]}
		case itemErrs != nil:
			r.done <- result[Out]{err: fmt.Errorf("batch: run returned %d outputs for %d items", len(outs), len(live))}
		case err != nil:
			r.done <- result[Out]{err: err}
		default:
			r.done <- result[Out]{out: outs[i]}
		}
	}
}

// call runs b.run, turning a panic into an error.
func (b *Batcher[In, Out]) call(ctx context.Context, ins []In) (outs []Out, err error) {
	defer func() {
		if p := recover(); p != nil {
			outs, err = nil, fmt.Errorf("batch: run panicked: %v", p)
		}
	}()
	return b.run(ctx, ins)
}
