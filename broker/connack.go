package broker

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// connackHook tells MQTT 5 clients the broker's limits in CONNACK: the
// Maximum Packet Size (mochi v2.7.9 enforces it but does not send it) and
// a Server Keep Alive when a client asks for a longer keep-alive than the
// broker allows, or for none. MQTT 3.1.1 has no way to say either.
type connackHook struct {
	mqtt.HookBase
	maxPacket    uint32
	maxKeepAlive uint16 // seconds; 0 = no cap
}

func (h *connackHook) ID() string { return "mqttinfer-connack" }

func (h *connackHook) Provides(b byte) bool { return b == mqtt.OnConnect || b == mqtt.OnPacketEncode }

// OnConnect caps the keep-alive of an MQTT 5 client: the broker then tells
// it the Server Keep Alive it must use, and holds it to it.
func (h *connackHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if h.maxKeepAlive == 0 || cl.Properties.ProtocolVersion < 5 {
		return nil
	}
	if ka := pk.Connect.Keepalive; ka == 0 || ka > h.maxKeepAlive {
		cl.State.Keepalive = h.maxKeepAlive
		cl.State.ServerKeepalive = true
	}
	return nil
}

// OnPacketEncode adds the Maximum Packet Size to an MQTT 5 CONNACK, unless
// that would make the CONNACK bigger than the client's own maximum packet
// size (which the broker must respect: it would not send it at all).
func (h *connackHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Connack || cl.Properties.ProtocolVersion != 5 || h.maxPacket == 0 {
		return pk
	}
	with := pk
	with.Properties.MaximumPacketSize = h.maxPacket
	if limit := cl.Properties.Props.MaximumPacketSize; limit > 0 {
		with.ProtocolVersion = 5
		var buf bytes.Buffer
		if with.ConnackEncode(&buf) != nil || uint32(buf.Len()) > limit {
			return pk
		}
	}
	return with
}
