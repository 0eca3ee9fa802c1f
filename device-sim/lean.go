package devicesim

import (
	"bufio"
	"bytes"
	"container/heap"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Lean mode: each device is one MQTT 3.1.1 connection whose packets are
// encoded and decoded with mochi's packets package, read by one goroutine
// with a small buffer, and written by a few shared sender goroutines that
// pace every device from one schedule (Options.Lean). A paho client costs
// several goroutines, channels and buffers per connection; at 10,000
// devices that made the simulator, not the service, the bottleneck.

// leanKeepAlive is the keep-alive a lean connection announces; the
// senders ping a connection that has written nothing for half of it.
const leanKeepAlive = 60 * time.Second

// leanReadBuffer is each connection's read buffer: replies are small.
const leanReadBuffer = 2 << 10

var errLeanClosed = errors.New("connection closed")

// leanConn is one device's lean connection.
type leanConn struct {
	c       net.Conn
	onReply func(payload []byte)
	onLost  func(error) // the connection dropped (not closed by us)

	wmu       sync.Mutex // guards the writes and what follows
	wbuf      bytes.Buffer
	packetID  uint16
	lastWrite time.Time
	closed    bool

	dead chan struct{} // closed when the reader stops
}

// leanDial connects, subscribes to filter at qos, and starts the reader,
// which hands every PUBLISH payload to onReply (on the reader goroutine).
func leanDial(ctx context.Context, broker, clientID, user, pass string, tlsCfg *tls.Config, timeout time.Duration,
	filter string, qos byte, onReply func([]byte), onLost func(error)) (*leanConn, error) {
	u, err := url.Parse(brokerURL(broker))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	var c net.Conn
	switch u.Scheme {
	case "tcp", "mqtt":
		c, err = d.DialContext(ctx, "tcp", u.Host)
	case "ssl", "tls", "mqtts":
		td := tls.Dialer{NetDialer: &d, Config: tlsCfg}
		c, err = td.DialContext(ctx, "tcp", u.Host)
	case "unix":
		c, err = d.DialContext(ctx, "unix", u.Path)
	default:
		return nil, fmt.Errorf("lean mode dials tcp://, ssl:// and unix:// brokers, not %s://", u.Scheme)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s as %q: %w (is the service or broker running there?)", broker, clientID, err)
	}
	l := &leanConn{c: c, onReply: onReply, onLost: onLost, dead: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	r := bufio.NewReaderSize(c, leanReadBuffer)
	if err := l.handshake(r, clientID, user, pass, filter, qos); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect to %s as %q: %w", broker, clientID, err)
	}
	_ = c.SetDeadline(time.Time{})
	go l.read(r)
	return l, nil
}

func (l *leanConn) handshake(r *bufio.Reader, clientID, user, pass, filter string, qos byte) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: clientID, Clean: true,
			Keepalive: uint16(leanKeepAlive / time.Second)}}
	if user != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(user)
	}
	if pass != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(pass)
	}
	if err := l.write(func(b *bytes.Buffer) error { return pk.ConnectEncode(b) }); err != nil {
		return err
	}
	in, err := ReadPacket(r)
	if err != nil {
		return err
	}
	if in.FixedHeader.Type != packets.Connack || in.ReasonCode != 0 {
		return fmt.Errorf("refused: CONNACK code %#x", in.ReasonCode)
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}}
	if err := l.write(func(b *bytes.Buffer) error { return sub.SubscribeEncode(b) }); err != nil {
		return err
	}
	if in, err = ReadPacket(r); err != nil {
		return err
	}
	if in.FixedHeader.Type != packets.Suback || len(in.ReasonCodes) != 1 || in.ReasonCodes[0] >= 0x80 {
		return fmt.Errorf("subscribe to %s: %w", filter, errSubRefused)
	}
	return nil
}

// ReadPacket reads and decodes one packet of MQTT 3.1.1 that a broker sends
// a device (CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP).
func ReadPacket(r *bufio.Reader) (packets.Packet, error) {
	pk := packets.Packet{ProtocolVersion: 4}
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(buf)
	case packets.Suback:
		err = pk.SubackDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// read delivers replies and acknowledges them until the connection ends.
func (l *leanConn) read(r *bufio.Reader) {
	var err error
	defer func() {
		l.wmu.Lock()
		closed := l.closed
		l.closed = true
		l.wmu.Unlock()
		l.c.Close()
		if !closed && l.onLost != nil {
			l.onLost(err)
		}
		close(l.dead)
	}()
	for {
		var pk packets.Packet
		if pk, err = ReadPacket(r); err != nil {
			return
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue // PUBACK, PINGRESP: nothing to do
		}
		if pk.FixedHeader.Qos > 0 {
			ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: pk.PacketID}
			if err = l.write(func(b *bytes.Buffer) error { return ack.PubackEncode(b) }); err != nil {
				return
			}
		}
		l.onReply(pk.Payload)
	}
}

// write encodes one packet and writes it.
func (l *leanConn) write(encode func(*bytes.Buffer) error) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.closed {
		return errLeanClosed
	}
	l.wbuf.Reset()
	if err := encode(&l.wbuf); err != nil {
		return err
	}
	_ = l.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := l.c.Write(l.wbuf.Bytes())
	l.lastWrite = time.Now()
	if l.wbuf.Cap() > 64<<10 {
		l.wbuf = bytes.Buffer{} // do not keep a large input's buffer
	}
	return err
}

// publish sends one request.
func (l *leanConn) publish(topic string, qos byte, payload []byte) error {
	return l.write(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, ProtocolVersion: 4,
			TopicName: topic, Payload: payload}
		if qos > 0 {
			l.packetID = max(l.packetID+1, 1) // 0 is not a packet id
			pk.PacketID = l.packetID
		}
		return pk.PublishEncode(b)
	})
}

// pingIfIdle sends a PINGREQ when nothing was written for half the keep-alive.
func (l *leanConn) pingIfIdle(now time.Time) {
	l.wmu.Lock()
	idle := now.Sub(l.lastWrite) > leanKeepAlive/2
	l.wmu.Unlock()
	if idle {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
		_ = l.write(func(b *bytes.Buffer) error { return pk.PingreqEncode(b) })
	}
}

// close sends DISCONNECT, closes the connection and waits for the reader.
func (l *leanConn) close() {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}
	_ = l.write(func(b *bytes.Buffer) error { return pk.DisconnectEncode(b) })
	l.wmu.Lock()
	l.closed = true
	l.wmu.Unlock()
	l.c.Close()
	<-l.dead
}

// schedule sends for devs on the calling goroutine, each at its own pace
// (trySend), from one min-heap of next-send times, until stop is closed or
// every device has finished or lost its connection (lean mode has no
// failover). It also pings the connections that have been quiet.
func schedule(devs []*device, stop <-chan struct{}) {
	h := make(sendHeap, 0, len(devs))
	for _, d := range devs {
		d.startSchedule()
		h = append(h, sendAt{d.next, d})
	}
	heap.Init(&h)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	ping := time.NewTicker(leanKeepAlive / 4)
	defer ping.Stop()
	for len(h) > 0 {
		select {
		case <-stop:
			return
		case now := <-ping.C:
			for _, s := range h {
				s.d.client.(leanClient).l.pingIfIdle(now)
			}
		default:
		}
		now := time.Now()
		top := &h[0]
		if top.at.After(now) {
			timer.Reset(top.at.Sub(now))
			select {
			case <-timer.C:
			case <-stop:
				return
			case now := <-ping.C:
				timer.Stop()
				for _, s := range h {
					s.d.client.(leanClient).l.pingIfIdle(now)
				}
			}
			continue
		}
		d := top.d
		switch res, at := d.trySend(now); res {
		case notYet:
			top.at = at
			heap.Fix(&h, 0)
		case sentOne:
			top.at = d.next
			heap.Fix(&h, 0)
		default:
			heap.Pop(&h)
		}
	}
}

// sendAt is a device and when it sends next.
type sendAt struct {
	at time.Time
	d  *device
}

type sendHeap []sendAt

func (h sendHeap) Len() int           { return len(h) }
func (h sendHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h sendHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *sendHeap) Push(x any)        { *h = append(*h, x.(sendAt)) }
func (h *sendHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
