package broker

import (
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Sessions learns what happens to the devices' connections on this
// broker: a cluster edge keeps, for each device connected to it, which
// results the device has acknowledged, so that another edge can give it
// the rest when it moves there. Every method is called on the client's
// own goroutine (Sent on the publisher's) and must not block for long.
type Sessions interface {
	// Connected: a client of device has connected. The broker reads its
	// packets only once Connected has returned.
	Connected(device string)
	// Subscribed: a client of device has subscribed.
	Subscribed(device string)
	// Sent: the broker has sent a client of device a QoS 1 or 2 message,
	// as packet id (during a Send, on the goroutine that called it).
	Sent(device string, id uint16)
	// Acked: the client of device has acknowledged packet id (PUBACK,
	// PUBCOMP).
	Acked(device string, id uint16)
	// Disconnected: a client of device is gone.
	Disconnected(device string)
}

// sessionsHook tells Options.Sessions about the clients that are devices
// (those whose sender id is a valid device id).
type sessionsHook struct {
	mqtt.HookBase
	auth *authHook
	s    Sessions
}

func (h *sessionsHook) ID() string { return "mqttinfer-sessions" }

func (h *sessionsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnSubscribed, mqtt.OnQosPublish, mqtt.OnPacketRead, mqtt.OnDisconnect:
		return true
	}
	return false
}

// device is cl's device id, "" for a client that is not one.
func (h *sessionsHook) device(cl *mqtt.Client) string {
	if cl.Net.Inline {
		return ""
	}
	id := h.auth.senderID(cl)
	if topics.ValidID(id) != nil {
		return ""
	}
	return id
}

func (h *sessionsHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if d := h.device(cl); d != "" {
		h.s.Connected(d)
	}
}

func (h *sessionsHook) OnSubscribed(cl *mqtt.Client, _ packets.Packet, codes []byte) {
	d := h.device(cl)
	if d == "" {
		return
	}
	for _, c := range codes {
		if c < packets.ErrUnspecifiedError.Code {
			h.s.Subscribed(d)
			return
		}
	}
}

func (h *sessionsHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, resends int) {
	if resends > 0 {
		return
	}
	if d := h.device(cl); d != "" {
		h.s.Sent(d, pk.PacketID)
	}
}

// OnPacketRead sees the client's acknowledgements of the broker's
// publishes (OnQosComplete cannot tell them from the broker's own acks of
// the client's publishes).
func (h *sessionsHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if t := pk.FixedHeader.Type; t == packets.Puback || t == packets.Pubcomp {
		if d := h.device(cl); d != "" {
			h.s.Acked(d, pk.PacketID)
		}
	}
	return pk, nil
}

func (h *sessionsHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if d := h.device(cl); d != "" {
		h.s.Disconnected(d)
	}
}

// SendTo publishes a reply to the clients of device alone, through their
// subscriptions that match its topic (not to the other subscribers); it
// reports whether one was subscribed.
func (b *Broker) SendTo(device string, p pipeline.Reply, qos byte) (bool, error) {
	subs := b.srv.Topics.Subscribers(p.Topic)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   p.Topic,
		Payload:     p.Payload,
		Created:     time.Now().Unix(),
	}
	if p.Properties {
		pk.Properties = packets.Properties{
			CorrelationData: p.CorrelationData,
			ContentType:     p.ContentType,
			User:            []packets.UserProperty{{Key: pipeline.StatusProperty, Val: p.StatusValue()}},
		}
	}
	if cl, ok := b.srv.Clients.Get(mqtt.InlineClientId); ok {
		pk.Origin = cl.ID
	}
	sent := false
	var errs []error
	for id, sub := range subs.Subscriptions {
		cl, ok := b.srv.Clients.Get(id)
		if !ok || cl.Net.Inline || b.reqs.auth.senderID(cl) != device {
			continue
		}
		if _, err := b.srv.PublishToClient(cl, sub, pk); err != nil {
			errs = append(errs, err)
			continue
		}
		sent = true
	}
	return sent, errors.Join(errs...)
}
