package cluster

import "sync"

// answered is the keys of the requests a worker answered lately (their
// final reply stored in the result stream), the last n at most. A request
// the server hands out again after that (its ack was lost with a NATS
// server, and the partition started over from its ack floor) is
// acknowledged without running it again: a second run would step the
// device's model state (an anomaly series) twice for one request.
type answered struct {
	mu   sync.Mutex
	set  map[string]struct{}
	ring []string // the keys in the order they were added
	next int      // where the next key goes in ring
}

func newAnswered(n int) *answered {
	return &answered{set: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add notes key, forgetting the oldest key when there are n.
func (a *answered) add(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.set[key]; ok {
		return
	}
	if old := a.ring[a.next]; old != "" {
		delete(a.set, old)
	}
	a.ring[a.next] = key
	a.set[key] = struct{}{}
	a.next = (a.next + 1) % len(a.ring)
}

// has reports whether key was answered lately.
func (a *answered) has(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.set[key]
	return ok
}
