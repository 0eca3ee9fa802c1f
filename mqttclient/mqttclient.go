// Package mqttclient is one MQTT client connection to any broker, for the
// parts of mqttinfer that are clients of a broker they do not run (the
// remote worker). It speaks MQTT 5 through github.com/eclipse/paho.golang or
// MQTT 3.1.1 through github.com/eclipse/paho.mqtt.golang, behind one small
// type, and dials tcp://, ssl:// (tls://, mqtts://), ws://, wss:// and
// unix:// URLs.
//
// A Conn never reconnects: when its connection ends, Done is closed and the
// caller decides what a new connection means (the remote worker starts a new
// incarnation with a clean session). Received messages reach one callback,
// in the order they arrived, on one goroutine.
package mqttclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Version is the MQTT protocol version of a connection.
type Version byte

// The protocol versions a Conn speaks.
const (
	// V311 is MQTT 3.1.1 (protocol level 4): no properties.
	V311 Version = 4
	// V5 is MQTT 5: response topic, correlation data, content type, user
	// properties, no-local subscriptions, message expiry.
	V5 Version = 5
)

// String is the version as users write it: "3.1.1" or "5".
func (v Version) String() string {
	switch v {
	case V311:
		return "3.1.1"
	case V5:
		return "5"
	}
	return fmt.Sprintf("protocol level %d", byte(v))
}

// ParseVersion reads "5" or "3.1.1" ("" means 5).
func ParseVersion(s string) (Version, error) {
	switch s {
	case "", "5", "5.0":
		return V5, nil
	case "3.1.1", "4":
		return V311, nil
	}
	return 0, fmt.Errorf("MQTT version %q: want 5 or 3.1.1", s)
}

// Properties are the MQTT 5 properties of a message that mqttinfer uses. An
// MQTT 3.1.1 connection sends none and receives none.
type Properties struct {
	ResponseTopic   string
	CorrelationData []byte
	ContentType     string
	// User are the user properties, in order.
	User []UserProperty
	// MessageExpiry, when positive, is how long the broker keeps the
	// message for subscribers that have not got it yet (retained messages
	// included); it is sent in whole seconds, at least one.
	MessageExpiry time.Duration
}

// UserProperty is one MQTT 5 user property.
type UserProperty struct{ Key, Value string }

// UserValue returns the value of the first user property named key, or "".
func (p Properties) UserValue(key string) string {
	for _, u := range p.User {
		if u.Key == key {
			return u.Value
		}
	}
	return ""
}

// Message is one application message, received or to be published.
type Message struct {
	Topic      string
	Payload    []byte
	QoS        byte
	Retain     bool
	Properties Properties
}

// Subscription is one topic filter to subscribe to.
type Subscription struct {
	Filter string
	QoS    byte
	// NoLocal asks the broker not to send back this connection's own
	// publishes (MQTT 5; ignored on 3.1.1, where they come back).
	NoLocal bool
}

// Options configure a connection.
type Options struct {
	// URL is the broker: tcp:// (or mqtt://), ssl:// (tls://, mqtts://,
	// tcps://), ws://, wss:// or unix:///path/to/socket. Required.
	URL string
	// ClientID is the MQTT client id; "" asks the broker to assign one
	// (MQTT 5; most 3.1.1 brokers refuse an empty id).
	ClientID string
	// Username and Password log in, when set.
	Username string
	Password string
	// TLS configures ssl:// and wss:// connections; nil uses the system's
	// roots and no client certificate.
	TLS *tls.Config
	// Version is the protocol; 0 means V5.
	Version Version
	// KeepAlive is the MQTT keep-alive: a broker that hears nothing for
	// 1.5 times as long closes the connection and publishes the will. 0
	// means 30s.
	KeepAlive time.Duration
	// ConnectTimeout bounds the dial and the CONNECT/CONNACK exchange. 0
	// means 10s.
	ConnectTimeout time.Duration
	// Will is published by the broker when the connection ends without a
	// DISCONNECT (a crash, a network failure); nil sends none.
	Will *Message
	// ConnectUser are user properties of the CONNECT (MQTT 5 only).
	ConnectUser []UserProperty
	// OnMessage receives every message of the connection's subscriptions,
	// in arrival order, on one goroutine. QoS 1 messages are acknowledged
	// when it returns. It may publish (Send or Publish) but should return
	// quickly: the connection reads nothing else meanwhile.
	OnMessage func(Message)
}

// ErrClosed is the cause of a Conn closed by Close.
var ErrClosed = errors.New("connection closed by the client")

// Conn is one connection to a broker. Its methods are safe for concurrent
// use.
type Conn struct {
	version Version
	impl    impl
	done    chan struct{}
	err     errOnce
}

// impl is one protocol's client library behind a Conn.
type impl interface {
	subscribe(ctx context.Context, subs []Subscription) error
	publish(ctx context.Context, m Message, wait bool) error
	disconnect() error
}

// Dial connects to the broker and returns the connection once the broker
// has accepted it (CONNACK success).
func Dial(ctx context.Context, o Options) (*Conn, error) {
	u, err := ParseURL(o.URL)
	if err != nil {
		return nil, err
	}
	if o.Version == 0 {
		o.Version = V5
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.OnMessage == nil {
		o.OnMessage = func(Message) {}
	}
	c := &Conn{version: o.Version, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	switch o.Version {
	case V5:
		c.impl, err = dialV5(ctx, u, o, c.lost)
	case V311:
		c.impl, err = dialV311(ctx, u, o, c.lost)
	default:
		return nil, fmt.Errorf("mqtt: unsupported protocol version %d", o.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s (MQTT %s) as %q: %w", redact(u), o.Version, o.ClientID, err)
	}
	return c, nil
}

// lost records why the connection ended and closes Done, once.
func (c *Conn) lost(err error) {
	if err == nil {
		err = errors.New("connection lost")
	}
	if c.err.set(err) {
		close(c.done)
	}
}

// Version is the protocol version of the connection.
func (c *Conn) Version() Version { return c.version }

// Done is closed when the connection has ended, whatever the cause.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection ended (nil while it is up).
func (c *Conn) Err() error { return c.err.get() }

// Subscribe subscribes to filters and waits for the broker's answer; a
// filter the broker refuses is an error naming it.
func (c *Conn) Subscribe(ctx context.Context, subs ...Subscription) error {
	return c.impl.subscribe(ctx, subs)
}

// Publish publishes m and, at QoS 1, waits until the broker has
// acknowledged it; a negative acknowledgement (MQTT 5 reason code 0x80 or
// more) is an error.
func (c *Conn) Publish(ctx context.Context, m Message) error {
	return c.impl.publish(ctx, m, true)
}

// Send publishes m without waiting for the broker's acknowledgement.
// Messages sent (or published) by one goroutine are written to the
// connection in the order of the calls.
func (c *Conn) Send(m Message) error {
	return c.impl.publish(context.Background(), m, false)
}

// Close disconnects cleanly (the broker does not publish the will) and
// waits for the client library to stop.
func (c *Conn) Close() error {
	c.lost(ErrClosed)
	return c.impl.disconnect()
}

// ParseURL checks a broker URL and returns it parsed.
func ParseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err == nil {
		switch strings.ToLower(u.Scheme) {
		case "tcp", "mqtt", "ssl", "tls", "mqtts", "tcps", "ws", "wss":
			if u.Host != "" {
				return u, nil
			}
		case "unix":
			if unixPath(u) != "" {
				return u, nil
			}
		}
	}
	return nil, fmt.Errorf("broker URL %q: want tcp://host:port, ssl://host:port, ws://host:port/path, wss://host:port/path or unix:///path/to/socket", s)
}

// unixPath is the socket path of a unix:// URL: unix:///run/mqtt.sock, or a
// path relative to the working directory as unix://mqtt.sock.
func unixPath(u *url.URL) string {
	return u.Host + u.Path
}

// redact is u without its password, for messages.
func redact(u *url.URL) string {
	return u.Redacted()
}

// dial opens the network connection for u.
func dial(ctx context.Context, u *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	var d net.Dialer
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		return d.DialContext(ctx, "tcp", u.Host)
	case "ssl", "tls", "mqtts", "tcps":
		td := tls.Dialer{NetDialer: &d, Config: tlsCfg}
		return td.DialContext(ctx, "tcp", u.Host)
	case "ws", "wss":
		return dialWebsocket(ctx, u, tlsCfg)
	case "unix":
		return d.DialContext(ctx, "unix", unixPath(u))
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// expirySeconds converts a message expiry to MQTT's whole seconds (at least 1).
func expirySeconds(d time.Duration) *uint32 {
	if d <= 0 {
		return nil
	}
	s := uint32(max((d+time.Second-1)/time.Second, 1))
	return &s
}

// errOnce keeps the first error set.
type errOnce struct {
	mu  sync.Mutex
	err error
}

// set records err unless an error is recorded already, and reports whether it did.
func (e *errOnce) set(err error) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return false
	}
	e.err = err
	return true
}

func (e *errOnce) get() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}
