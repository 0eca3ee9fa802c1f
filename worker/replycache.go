package worker

import (
	"container/list"
	"hash/fnv"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
)

// DefaultReplyCacheSize is the number of replies a replyCache of size 0 keeps.
const DefaultReplyCacheSize = 10000

// replyKey names one request for the reply cache: a device's copy of it
// (its retry with the same id after a lost PUBACK, a QoS 1 redelivery) has
// the same topic, the same id and the same body. A reused id with another
// body is another request.
type replyKey struct {
	version, device, model, id string
	body                       uint64 // FNV-1a of the body
}

func newReplyKey(r *pipeline.Request) replyKey {
	h := fnv.New64a()
	h.Write(r.Payload)
	return replyKey{r.Topic.Version, r.Device(), r.Topic.Model, r.Body.ID, h.Sum64()}
}

// replyCache remembers the final replies of recent requests so that a copy
// of a request is answered with the first copy's reply instead of running
// the model again. At most size replies are kept, each for ttl. It is safe
// for concurrent use.
type replyCache struct {
	ttl  time.Duration
	size int

	mu      sync.Mutex
	entries map[replyKey]*list.Element
	order   list.List // of *cached, oldest first
}

type cached struct {
	key     replyKey
	reply   pipeline.Reply
	expires time.Time
}

// newReplyCache returns a cache; a ttl of 0 or less keeps nothing.
func newReplyCache(ttl time.Duration, size int) *replyCache {
	if size <= 0 {
		size = DefaultReplyCacheSize
	}
	return &replyCache{ttl: ttl, size: size, entries: map[replyKey]*list.Element{}}
}

// get returns the remembered reply of k.
func (c *replyCache) get(k replyKey, now time.Time) (pipeline.Reply, bool) {
	if c.ttl <= 0 {
		return pipeline.Reply{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(now)
	if e, ok := c.entries[k]; ok {
		return e.Value.(*cached).reply, true
	}
	return pipeline.Reply{}, false
}

// put remembers the final reply of k.
func (c *replyCache) put(k replyKey, reply pipeline.Reply, now time.Time) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[k]; ok {
		c.order.Remove(e)
	}
	c.entries[k] = c.order.PushBack(&cached{key: k, reply: reply, expires: now.Add(c.ttl)})
	for c.order.Len() > c.size {
		c.drop(c.order.Front())
	}
}

func (c *replyCache) expire(now time.Time) {
	for e := c.order.Front(); e != nil && !e.Value.(*cached).expires.After(now); e = c.order.Front() {
		c.drop(e)
	}
}

func (c *replyCache) drop(e *list.Element) {
	delete(c.entries, c.order.Remove(e).(*cached).key)
}

// worthKeeping reports whether a final reply answers its request for good.
// Transient outcomes (a deadline missed while waiting, throttling, a failed
// or overloaded worker, a canceled request) are not remembered: the device
// retries them with the same id and must get a fresh attempt.
func worthKeeping(status int) bool {
	switch {
	case status >= 500, status == api.DeadlineExceeded.Status(), status == api.RateLimited.Status(), status == api.Canceled.Status():
		return false
	}
	return true
}
