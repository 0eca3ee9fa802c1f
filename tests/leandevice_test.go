package tests

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
	"github.com/mqttinfer/mqttinfer/topics"
)

// leanDevice is a device for latency benchmarks: one MQTT 3.1.1 connection
// read and written by the benchmark's own goroutine, packets encoded and
// decoded by mochi's packets package. A paho client hands each packet
// through several goroutines; on two shared cores those hand-offs are a
// large part of a round trip that is meant to measure the service. Packets
// are read as the simulator's lean devices read them.
type leanDevice struct {
	t   testing.TB
	c   net.Conn
	r   *bufio.Reader
	buf bytes.Buffer
	id  uint16
}

func newLeanDevice(t testing.TB, addr, prefix, id string) *leanDevice {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &leanDevice{t: t, c: c, r: bufio.NewReader(c)}
	d.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60}})
	if pk := d.read(); pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		t.Fatalf("CONNACK: %+v", pk)
	}
	d.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: topics.ResultFilter(prefix, "", id, ""), Qos: 1}}})
	if pk := d.read(); pk.FixedHeader.Type != packets.Suback || len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] >= 0x80 {
		t.Fatalf("SUBACK: %+v", pk)
	}
	return d
}

func (d *leanDevice) write(pk packets.Packet) {
	d.buf.Reset()
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&d.buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&d.buf)
	case packets.Publish:
		err = pk.PublishEncode(&d.buf)
	case packets.Puback:
		err = pk.PubackEncode(&d.buf)
	}
	if err == nil {
		_, err = d.c.Write(d.buf.Bytes())
	}
	if err != nil {
		d.t.Fatal(err)
	}
}

func (d *leanDevice) read() packets.Packet {
	pk, err := devicesim.ReadPacket(d.r)
	if err != nil {
		d.t.Fatal(err)
	}
	return pk
}

// publish sends payload on topic at QoS 1; its PUBACK is read by next.
func (d *leanDevice) publish(topic string, payload []byte) {
	d.id = max(d.id+1, 1)
	d.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
		TopicName: topic, Payload: payload, PacketID: d.id})
}

// next returns the payload of the next message on the device's result
// topics, acknowledging it; PUBACKs on the way are skipped.
func (d *leanDevice) next() []byte {
	for {
		pk := d.read()
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		if pk.FixedHeader.Qos > 0 {
			d.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: pk.PacketID})
		}
		return pk.Payload
	}
}
