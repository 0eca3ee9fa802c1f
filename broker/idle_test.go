package broker

import (
	"bufio"
	"bytes"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// awaitedClients counts the read loops that wait for an idle client's next
// packet on a fresh goroutine (Options.ReadIdleRestart).
func awaitedClients() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "(*Server).awaitClient(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReadIdleRestart checks the patch carried in third_party/mochi-mqtt-server
// that moves an idle client's read loop to a fresh goroutine: the client
// goes on sending and receiving through as many moves as it idles, a packet
// whose first byte came before a move and the rest after it is read whole,
// and the keep-alive still ends a silent client.
func TestReadIdleRestart(t *testing.T) {
	const idle = 20 * time.Millisecond
	b := serve(t, Options{TCPAddr: "127.0.0.1:0", ReadIdleRestart: idle})
	listener, lm := b.login(t, "listener", "")
	if !subscribe(t, listener, "idle/#") {
		t.Fatal("subscription refused")
	}
	talker, _ := b.login(t, "talker", "")
	for i := range 3 {
		waitFor(t, "both clients idle on fresh goroutines", func() bool { return awaitedClients() >= 2 })
		publish(t, talker, "idle/talk", string(rune('a'+i)))
		lm.await(t, "idle/talk")
		if got := lm.payload("idle/talk"); got != string(rune('a'+i)) {
			t.Fatalf("round %d: got %q", i, got)
		}
	}

	// A raw client: its PUBLISH's first byte arrives, then the rest after
	// longer than idle.
	c, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	write := func(encode func(*bytes.Buffer) error) []byte {
		var buf bytes.Buffer
		if err := encode(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "raw", Clean: true, Keepalive: 1}}
	if _, err := c.Write(write(connect.ConnectEncode)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if hb, err := r.ReadByte(); err != nil || hb>>4 != packets.Connack {
		t.Fatalf("CONNACK: %#x %v", hb, err)
	}
	if _, err := r.Discard(3); err != nil {
		t.Fatal(err)
	}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: 4}
	if _, err := c.Write(write(ping.PingreqEncode)); err != nil {
		t.Fatal(err)
	}
	if hb, err := r.ReadByte(); err != nil || hb>>4 != packets.Pingresp {
		t.Fatalf("PINGRESP: %#x %v", hb, err)
	}
	if _, err := r.Discard(1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the raw client idle on a fresh goroutine", func() bool { return awaitedClients() >= 3 })
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: "idle/split", Payload: []byte("whole")}
	raw := write(pub.PublishEncode)
	for _, part := range [][]byte{raw[:1], raw[1:3], raw[3:]} {
		if _, err := c.Write(part); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * idle) // the next part comes after the read loop would have moved
	}
	lm.await(t, "idle/split")
	if got := lm.payload("idle/split"); got != "whole" {
		t.Fatalf("split publish: got %q", got)
	}

	// Silent for longer than its keep-alive (1 s, so 1.5 s): the broker
	// closes the connection, though its reader moved in between.
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("a silent client was not disconnected")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("a silent client was still connected %s later", time.Since(start))
	}
	waitFor(t, "the raw client's session ended", func() bool { return b.Clients() == 2 })
}
