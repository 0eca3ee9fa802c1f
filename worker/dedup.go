package worker

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// DefaultDedupSize is the number of answered requests a Dedup remembers when
// NewDedup is given a size of 0.
const DefaultDedupSize = 10000

// DedupKey names one request for duplicate detection: a redelivered copy has
// the same topic (version, device, model) and the same request id.
type DedupKey struct {
	Version string
	Device  string
	Model   string
	ID      string
}

// Dedup makes handling a request idempotent on its id. MQTT QoS 1 is "at
// least once": after a reconnect a broker may deliver a request again, and
// a device may republish one it got no PUBACK for. The first copy of a
// request runs; a copy that arrives while it runs waits for its reply, and a
// copy that arrives later, within the TTL, gets the remembered reply. No
// model runs twice for one request.
//
// At most size answered requests are remembered, oldest first out; requests
// still running are not counted (their number is bounded by the caller's
// concurrency). Dedup is safe for concurrent use.
type Dedup struct {
	ttl  time.Duration
	size int
	now  func() time.Time

	mu      sync.Mutex
	entries map[DedupKey]*dedupEntry
	done    list.List // answered entries, oldest first; expiry grows along it
	waiting int       // goroutines blocked in Begin on a running first copy
}

type dedupEntry struct {
	key     DedupKey
	ready   chan struct{} // closed by Finish
	reply   []byte        // set before ready is closed
	expires time.Time     // set when answered
	elem    *list.Element // in Dedup.done once answered and kept
}

// NewDedup returns a Dedup that remembers each reply for ttl and at most size
// replies (0 means DefaultDedupSize). now is the clock; nil means time.Now.
func NewDedup(ttl time.Duration, size int, now func() time.Time) *Dedup {
	if size <= 0 {
		size = DefaultDedupSize
	}
	if now == nil {
		now = time.Now
	}
	return &Dedup{ttl: ttl, size: size, now: now, entries: make(map[DedupKey]*dedupEntry)}
}

// Begin claims the request k. When no copy of it is running or remembered,
// Begin records it as running and returns dup == false: the caller runs the
// request and must then call Finish(k, ...) exactly once, whatever happens.
// Otherwise Begin returns dup == true and the first copy's reply, waiting
// for it while the first copy runs; the reply is nil when the first copy
// could produce none. If ctx ends while Begin waits, it returns ctx's error.
func (d *Dedup) Begin(ctx context.Context, k DedupKey) (reply []byte, dup bool, err error) {
	d.mu.Lock()
	d.expireLocked()
	e, ok := d.entries[k]
	if !ok {
		d.entries[k] = &dedupEntry{key: k, ready: make(chan struct{})}
		d.mu.Unlock()
		return nil, false, nil
	}
	select {
	case <-e.ready:
		d.mu.Unlock()
		return e.reply, true, nil
	default:
	}
	d.waiting++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.waiting--
		d.mu.Unlock()
	}()
	select {
	case <-e.ready:
		return e.reply, true, nil
	case <-ctx.Done():
		return nil, true, ctx.Err()
	}
}

// Finish records the reply to the request k claimed by Begin and hands it to
// the copies waiting for it. With keep, the reply is remembered for the TTL
// and answers later copies; without it (for transient outcomes such as 429 or
// 503, which the device is meant to retry with the same id) the request is
// forgotten once the waiting copies have their answer.
func (d *Dedup) Finish(k DedupKey, reply []byte, keep bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.entries[k]
	if !ok || e.elem != nil {
		return // not claimed, or already finished: nothing to do
	}
	e.reply = reply
	close(e.ready)
	if !keep || d.ttl <= 0 {
		delete(d.entries, k)
		return
	}
	e.expires = d.now().Add(d.ttl)
	e.elem = d.done.PushBack(e)
	for d.done.Len() > d.size {
		d.removeLocked(d.done.Front())
	}
}

// Len is the number of requests remembered or running.
func (d *Dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}

// Waiting is the number of copies waiting in Begin for a first copy to finish.
func (d *Dedup) Waiting() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.waiting
}

// expireLocked forgets the answered entries whose TTL has passed. They are
// in expiry order, so it stops at the first that is still fresh.
func (d *Dedup) expireLocked() {
	now := d.now()
	for el := d.done.Front(); el != nil; el = d.done.Front() {
		if el.Value.(*dedupEntry).expires.After(now) {
			return
		}
		d.removeLocked(el)
	}
}

func (d *Dedup) removeLocked(el *list.Element) {
	e := d.done.Remove(el).(*dedupEntry)
	delete(d.entries, e.key)
}
