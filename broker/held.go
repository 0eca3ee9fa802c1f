package broker

import "sync/atomic"

// Held is what the broker holds for its clients, counted from its own
// structures: a client that left with a clean session leaves nothing.
type Held struct {
	// Sessions are the client sessions mochi keeps, connected or kept
	// for a persistent client; the service's own inline client excluded.
	Sessions int
	// Subscriptions are the subscription filters, the service's own
	// included (mochi's count).
	Subscriptions int
	// Owners are the sessions the auth hook records as owned by a user.
	Owners int
	// Inflight are QoS 1 and 2 messages not yet acknowledged.
	Inflight int
}

// Held counts what the broker holds for its clients.
func (b *Broker) Held() Held {
	var h Held
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline {
			h.Sessions++
		}
	}
	h.Subscriptions = int(atomic.LoadInt64(&b.srv.Info.Subscriptions))
	h.Inflight = int(atomic.LoadInt64(&b.srv.Info.Inflight))
	a := b.reqs.auth
	a.mu.Lock()
	h.Owners = len(a.owners)
	a.mu.Unlock()
	return h
}
