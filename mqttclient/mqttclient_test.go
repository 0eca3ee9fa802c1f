package mqttclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
)

// wait bounds every wait here; a safety net, not a timing assertion.
const wait = 10 * time.Second

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// embedded starts mqttinfer's own broker (mochi) with TCP and WebSocket
// listeners and returns their URLs.
func embedded(t *testing.T) (tcpURL, wsURL string) {
	t.Helper()
	ws := freeAddr(t)
	b, err := broker.New(broker.Options{TCPAddr: "127.0.0.1:0", WSAddr: ws})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return "tcp://" + b.Addr(), "ws://" + ws
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
}

// client dials o and collects what it receives.
type client struct {
	*Conn
	msgs chan Message
}

func dialT(t *testing.T, o Options) *client {
	t.Helper()
	c := &client{msgs: make(chan Message, 64)}
	o.OnMessage = func(m Message) { c.msgs <- m }
	conn, err := Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	c.Conn = conn
	t.Cleanup(func() { c.Close() })
	return c
}

func (c *client) next(t *testing.T) Message {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(wait):
		t.Fatal("no message")
		return Message{}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// TestRoundTrip publishes and receives through each protocol version and
// transport: MQTT 5 carries its properties, MQTT 3.1.1 the message alone.
func TestRoundTrip(t *testing.T) {
	tcpURL, wsURL := embedded(t)
	for _, tc := range []struct {
		name string
		url  string
		v    Version
	}{
		{"v5-tcp", tcpURL, V5},
		{"v311-tcp", tcpURL, V311},
		{"v5-ws", wsURL, V5},
		{"v311-ws", wsURL, V311},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub := dialT(t, Options{URL: tc.url, ClientID: "sub-" + tc.name, Version: tc.v})
			if sub.Version() != tc.v {
				t.Fatalf("version %v", sub.Version())
			}
			topic := "rt/" + tc.name
			if err := sub.Subscribe(ctxT(t), Subscription{Filter: topic, QoS: 1}); err != nil {
				t.Fatal(err)
			}
			pub := dialT(t, Options{URL: tc.url, ClientID: "pub-" + tc.name, Version: tc.v})
			props := Properties{ResponseTopic: "replies/x", CorrelationData: []byte{1, 2}, ContentType: "application/cbor",
				User: []UserProperty{{"status", "200"}}}
			if err := pub.Publish(ctxT(t), Message{Topic: topic, Payload: []byte("hello"), QoS: 1, Properties: props}); err != nil {
				t.Fatal(err)
			}
			m := sub.next(t)
			if m.Topic != topic || string(m.Payload) != "hello" || m.QoS != 1 {
				t.Fatalf("got %+v", m)
			}
			if tc.v == V5 {
				p := m.Properties
				if p.ResponseTopic != "replies/x" || !bytes.Equal(p.CorrelationData, []byte{1, 2}) || p.ContentType != "application/cbor" || p.UserValue("status") != "200" {
					t.Fatalf("properties %+v", p)
				}
			}
		})
	}
}

// TestSendKeepsOrder: messages sent without waiting arrive in the order sent.
func TestSendKeepsOrder(t *testing.T) {
	tcpURL, _ := embedded(t)
	for _, v := range []Version{V5, V311} {
		t.Run(v.String(), func(t *testing.T) {
			sub := dialT(t, Options{URL: tcpURL, ClientID: "order-sub-" + v.String(), Version: v})
			if err := sub.Subscribe(ctxT(t), Subscription{Filter: "order/+", QoS: 1}); err != nil {
				t.Fatal(err)
			}
			pub := dialT(t, Options{URL: tcpURL, ClientID: "order-pub-" + v.String(), Version: v})
			const n = 50
			for i := range n {
				topic := "order/a"
				if i%2 == 1 {
					topic = "order/b" // two topics: order holds across them too
				}
				if err := pub.Send(Message{Topic: topic, Payload: []byte(fmt.Sprint(i)), QoS: 1}); err != nil {
					t.Fatal(err)
				}
			}
			for i := range n {
				if m := sub.next(t); string(m.Payload) != fmt.Sprint(i) {
					t.Fatalf("message %d: got %s", i, m.Payload)
				}
			}
		})
	}
}

// TestNoLocal: an MQTT 5 subscription with NoLocal does not get the
// connection's own publishes back.
func TestNoLocal(t *testing.T) {
	tcpURL, _ := embedded(t)
	c := dialT(t, Options{URL: tcpURL, ClientID: "nolocal", Version: V5})
	if err := c.Subscribe(ctxT(t), Subscription{Filter: "nl/#", QoS: 1, NoLocal: true}); err != nil {
		t.Fatal(err)
	}
	other := dialT(t, Options{URL: tcpURL, ClientID: "other", Version: V5})
	if err := c.Publish(ctxT(t), Message{Topic: "nl/own", Payload: []byte("own"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if err := other.Publish(ctxT(t), Message{Topic: "nl/other", Payload: []byte("other"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if m := c.next(t); string(m.Payload) != "other" {
		t.Fatalf("got %s first: the own publish came back", m.Payload)
	}
}

// TestWillOnCrash: a connection that ends without DISCONNECT has its will
// published; Close sends none.
func TestWillOnCrash(t *testing.T) {
	tcpURL, _ := embedded(t)
	for _, v := range []Version{V5, V311} {
		t.Run(v.String(), func(t *testing.T) {
			watch := dialT(t, Options{URL: tcpURL, ClientID: "watch-" + v.String(), Version: v})
			if err := watch.Subscribe(ctxT(t), Subscription{Filter: "will/" + v.String(), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			will := &Message{Topic: "will/" + v.String(), Payload: []byte("gone"), QoS: 1}
			proxy := newProxy(t, strings.TrimPrefix(tcpURL, "tcp://"))
			crash, err := Dial(ctxT(t), Options{URL: "tcp://" + proxy.addr, ClientID: "crash-" + v.String(), Version: v, Will: will})
			if err != nil {
				t.Fatal(err)
			}
			proxy.cut()
			if m := watch.next(t); string(m.Payload) != "gone" {
				t.Fatalf("will %s", m.Payload)
			}
			select {
			case <-crash.Done():
			case <-time.After(wait):
				t.Fatal("Done not closed after the connection broke")
			}
			if crash.Err() == nil || errors.Is(crash.Err(), ErrClosed) {
				t.Fatalf("Err = %v", crash.Err())
			}
			crash.Close()

			clean := dialT(t, Options{URL: tcpURL, ClientID: "clean-" + v.String(), Version: v, Will: will})
			if err := clean.Close(); err != nil {
				t.Fatal(err)
			}
			<-clean.Done()
			if !errors.Is(clean.Err(), ErrClosed) {
				t.Fatalf("Err after Close = %v", clean.Err())
			}
			// A marker published after the clean close arrives with no will before it.
			if err := watch.Publish(ctxT(t), Message{Topic: "will/" + v.String(), Payload: []byte("marker"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			if m := watch.next(t); string(m.Payload) != "marker" {
				t.Fatalf("got %s: a clean close sent the will", m.Payload)
			}
		})
	}
}

// TestTLSAndUnixOnMosquitto: a broker with a private CA that requires a
// client certificate, and a Unix socket listener.
func TestTLSAndUnixOnMosquitto(t *testing.T) {
	ca := testenv.NewCA(t)
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{TLS: ca, ClientCerts: true, Unix: true})
	for _, v := range []Version{V5, V311} {
		t.Run(v.String(), func(t *testing.T) {
			tlsc := dialT(t, Options{URL: "ssl://" + m.TLSAddr, ClientID: "tls-" + v.String(), Version: v, TLS: ca.ClientTLS(t, "worker-1")})
			if err := tlsc.Subscribe(ctxT(t), Subscription{Filter: "sec/" + v.String(), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			unix := dialT(t, Options{URL: "unix://" + m.Socket, ClientID: "unix-" + v.String(), Version: v})
			if err := unix.Publish(ctxT(t), Message{Topic: "sec/" + v.String(), Payload: []byte("over unix"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			if got := tlsc.next(t); string(got.Payload) != "over unix" {
				t.Fatalf("got %s", got.Payload)
			}

			// Without a client certificate, or trusting another CA, no connection.
			if c, err := Dial(ctxT(t), Options{URL: "ssl://" + m.TLSAddr, ClientID: "nocert", Version: v, TLS: ca.ClientTLS(t, "")}); err == nil {
				c.Close()
				t.Fatal("connected without a client certificate")
			}
			other := testenv.NewCA(t)
			if c, err := Dial(ctxT(t), Options{URL: "ssl://" + m.TLSAddr, ClientID: "othera", Version: v, TLS: other.ClientTLS(t, "x")}); err == nil {
				c.Close()
				t.Fatal("connected to a server whose CA is not trusted")
			}
		})
	}
}

func TestParseURL(t *testing.T) {
	for _, s := range []string{"tcp://h:1883", "mqtt://h:1", "ssl://h:8883", "tls://h:1", "mqtts://h:1", "ws://h:1/mqtt", "wss://h:1", "unix:///run/m.sock", "unix://m.sock"} {
		if _, err := ParseURL(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"", "h:1883", "http://h:1", "tcp://", "unix://", "tcp//h:1"} {
		if _, err := ParseURL(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// proxy forwards one TCP connection to a target until cut, which breaks it
// without an MQTT DISCONNECT: what a crash or a network failure looks like.
type proxy struct {
	addr  string
	ln    net.Listener
	conns chan net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), ln: ln, conns: make(chan net.Conn, 2)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		p.conns <- c
		p.conns <- up
		go func() { _, _ = copyAll(up, c) }()
		go func() { _, _ = copyAll(c, up) }()
	}()
	t.Cleanup(func() { ln.Close() })
	return p
}

func (p *proxy) cut() {
	(<-p.conns).Close()
	(<-p.conns).Close()
	p.ln.Close()
}

func copyAll(dst, src net.Conn) (int64, error) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if err != nil {
			return n, err
		}
	}
}
