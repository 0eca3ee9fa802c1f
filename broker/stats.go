package broker

import (
	"math/rand/v2"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// statsHook keeps the connection gauge and the dropped-message counter, and
// picks shared-subscription members among connected clients only (mochi
// would otherwise queue a share for an offline persistent member).
type statsHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *statsHook) ID() string { return "mqttinfer-stats" }

func (h *statsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnDisconnect, mqtt.OnPublishDropped, mqtt.OnSelectSubscribers:
		return true
	}
	return false
}

func (h *statsHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	h.b.opts.Metrics.Connected(1)
	return nil
}

func (h *statsHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.b.opts.Metrics.Connected(-1)
}

func (h *statsHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.opts.Metrics.Dropped()
	h.b.log.Warn("message dropped: client outbound queue full", "client", cl.ID, "topic", pk.TopicName)
}

// OnSelectSubscribers picks one connected member per shared group, at random.
func (h *statsHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if len(subs.Shared) == 0 {
		return subs
	}
	if subs.SharedSelected == nil {
		subs.SharedSelected = map[string]packets.Subscription{}
	}
	for _, members := range subs.Shared {
		var live []string
		for id := range members {
			if cl, ok := h.b.srv.Clients.Get(id); ok && !cl.Closed() {
				live = append(live, id)
			}
		}
		if len(live) == 0 {
			continue // nobody to take it now; mochi queues it for a persistent member
		}
		id := live[rand.IntN(len(live))]
		sub := members[id]
		if prev, ok := subs.SharedSelected[id]; ok {
			sub = prev.Merge(sub)
		}
		subs.SharedSelected[id] = sub
	}
	return subs
}
