// Package broker owns the embedded MQTT broker of mqttinfer: a mochi-mqtt v2
// server with its listeners and options, and the hooks that apply the
// service's rules inside the topic prefix (identity and ACL, request
// validation, throttling, hand-off to workers). Outside the prefix it is a
// plain MQTT 3.1.1 / 5 broker.
//
// Accepted requests leave through the Dispatcher interface (the in-process
// worker pool) or, when there is none, are routed to remote workers' shared
// subscriptions. The broker never imports the worker or the models.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	pebblestore "github.com/mochi-mqtt/server/v2/hooks/storage/pebble"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Options configure a Broker. Zero values are replaced by the defaults noted.
type Options struct {
	// Prefix is the service's topic prefix (topics.DefaultPrefix).
	Prefix string
	// TCPAddr is the MQTT over TCP listen address; "" disables it.
	TCPAddr string
	// WSAddr is the MQTT over WebSocket listen address; "" disables it.
	// With TLS it is WebSocket over TLS.
	WSAddr string
	// TLSAddr is the MQTT over TLS listen address; "" disables it. It needs TLS.
	TLSAddr string
	// TLS is the server side of the TLS listeners (its client
	// authentication decides mutual TLS); nil means no TLS.
	TLS *tls.Config
	// CertIdentity is where a verified client certificate's identity comes
	// from: "cn" (the default) or "san". A client that shows one is that
	// device (see Credential and the auth hook).
	CertIdentity string
	// MaxPacketSize is the largest MQTT packet accepted, in bytes; a larger
	// one resets the connection (mochi's behaviour). 0 = 256 KiB.
	MaxPacketSize int
	// MaxRequestSize is the largest request payload, in bytes, of a model
	// without a limit of its own (RequestLimit); larger ones (up to
	// MaxPacketSize) get 413 payload_too_large. 0 = 64 KiB.
	MaxRequestSize int
	// RequestLimit returns a model's own request size limit in bytes, 0
	// for none; nil means none has one.
	RequestLimit func(model string) int
	// MaxClientWritesPending bounds each client's outbound queue, in
	// messages. mochi's default of 8192 costs ~88 KB per idle client. 0 = 256.
	MaxClientWritesPending int
	// ReadIdleRestart moves the read loop of a client that has sent
	// nothing for this long to a new goroutine with a small stack: handling
	// a SUBSCRIBE or a request grows a read loop's stack to 32 KB, which
	// the node does not shrink (cmd/mqttinfer: gcshrinkstackoff), and most
	// of a fleet is idle most of the time. 0 = 10s, negative = never.
	ReadIdleRestart time.Duration
	// MaxClients refuses connections past this many; 0 = unlimited.
	MaxClients int
	// SessionExpiry caps how long a disconnected persistent session is kept. 0 = 1h.
	SessionExpiry time.Duration
	// MaxKeepAlive caps the keep-alive of MQTT 5 clients, which CONNACK's
	// Server Keep Alive tells them (also given to those asking for none);
	// 0 = 60s, negative = no cap.
	MaxKeepAlive time.Duration
	// Credentials switch authentication on when non-nil: only these users may
	// connect, and their role decides what they may publish and subscribe.
	// nil is the open development mode.
	Credentials []Credential
	// StorageDir, when set, is the directory where the broker keeps its
	// clients, subscriptions, retained messages and QoS 1/2 messages in
	// flight or queued for offline sessions (mochi's Pebble hook), so that
	// they survive a restart.
	StorageDir string
	// Throttle limits each device; nil switches throttling off.
	Throttle *throttle.Limiter
	// Models returns the names of the models served, for 404 replies; nil
	// skips the model check at the broker.
	Models func() []string
	// HasModel reports whether a model is served, on every request; nil
	// looks the name up in Models, which costs a list per request.
	HasModel func(name string) bool
	// Dispatcher receives accepted requests; nil routes them to remote
	// workers subscribed to the request topics instead.
	Dispatcher Dispatcher
	// Sessions, when set, learns of the devices' connections, subscriptions
	// and acknowledgements (a cluster edge).
	Sessions Sessions
	// Metrics records counters; nil records nothing.
	Metrics *metrics.Metrics
	// Log receives the broker's logs; nil discards them.
	Log *slog.Logger
}

// Broker is the embedded MQTT broker.
type Broker struct {
	opts   Options
	srv    *mqtt.Server
	tcp    *listeners.TCP
	tlsl   *listeners.TCP
	reqs   *requestHook
	log    *slog.Logger
	closed chan struct{}
}

// New creates a broker with its listeners bound (so Addr is known) but not
// yet serving.
func New(opts Options) (*Broker, error) {
	if opts.Prefix == "" {
		opts.Prefix = topics.DefaultPrefix
	}
	if err := topics.ValidPrefix(opts.Prefix); err != nil {
		return nil, err
	}
	if opts.MaxPacketSize == 0 {
		opts.MaxPacketSize = 256 << 10
	}
	if opts.MaxRequestSize == 0 {
		opts.MaxRequestSize = 64 << 10
	}
	if opts.MaxRequestSize > opts.MaxPacketSize {
		return nil, fmt.Errorf("max request size %d is larger than max packet size %d", opts.MaxRequestSize, opts.MaxPacketSize)
	}
	if opts.MaxClientWritesPending == 0 {
		opts.MaxClientWritesPending = 256
	}
	if opts.SessionExpiry == 0 {
		opts.SessionExpiry = time.Hour
	}
	if opts.ReadIdleRestart == 0 {
		opts.ReadIdleRestart = 10 * time.Second
	}
	if opts.MaxKeepAlive == 0 {
		opts.MaxKeepAlive = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(opts.MaxPacketSize)
	caps.MaximumClientWritesPending = int32(opts.MaxClientWritesPending)
	caps.MaximumSessionExpiryInterval = uint32(min(opts.SessionExpiry/time.Second, math.MaxUint32))
	if opts.MaxClients > 0 {
		caps.MaximumClients = int64(opts.MaxClients)
	}
	// Paho's MQTT 5 clients reject acks that carry the publish's user
	// properties, and expect to read a DISCONNECT with its reason code (for
	// a Receive Maximum exceeded, say) before the connection closes: the
	// broker sends it and lets the client close.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	caps.Compatibilities.PassiveClientDisconnect = true

	auth, err := newAuthHook(opts.Prefix, opts.Credentials)
	if err != nil {
		return nil, err
	}
	srv := mqtt.New(&mqtt.Options{
		Capabilities:        caps,
		InlineClient:        true,
		Logger:              quietLogger(opts.Log.With("lib", "mochi")),
		ClientWritesPending: func(cl *mqtt.Client) int { return auth.writesPending(cl) },
		ReadIdleRestart:     max(opts.ReadIdleRestart, 0),
	})
	b := &Broker{opts: opts, srv: srv, log: opts.Log, closed: make(chan struct{})}

	auth.certMode = opts.CertIdentity
	b.reqs = newRequestHook(b, auth)
	maxKA := uint16(0)
	if opts.MaxKeepAlive > 0 {
		maxKA = uint16(min(opts.MaxKeepAlive/time.Second, math.MaxUint16))
	}
	conn := &connackHook{maxPacket: uint32(opts.MaxPacketSize), maxKeepAlive: maxKA}
	hooks := []mqtt.Hook{auth, &statsHook{b: b}, conn, b.reqs}
	if opts.Sessions != nil {
		hooks = append(hooks, &sessionsHook{auth: auth, s: opts.Sessions})
	}
	for _, h := range hooks {
		if err := srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("add %s hook: %w", h.ID(), err)
		}
	}
	if opts.StorageDir != "" {
		// NoSync: the store survives the process being killed (the
		// operating system keeps what was written), not a power loss, and
		// costs no fsync per message.
		if err := srv.AddHook(new(pebblestore.Hook), &pebblestore.Options{Path: opts.StorageDir, Mode: pebblestore.NoSync}); err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("storage in %s: %w", opts.StorageDir, err)
		}
	}

	if opts.TCPAddr != "" {
		b.tcp = listeners.NewTCP(listeners.Config{ID: "tcp", Address: opts.TCPAddr})
		if err := srv.AddListener(b.tcp); err != nil {
			return nil, fmt.Errorf("mqtt tcp listener on %s: %w", opts.TCPAddr, err)
		}
	}
	if opts.TLSAddr != "" {
		if opts.TLS == nil {
			b.closeListeners()
			return nil, errors.New("mqtt tls listener: no certificate")
		}
		b.tlsl = listeners.NewTCP(listeners.Config{ID: "tls", Address: opts.TLSAddr, TLSConfig: opts.TLS})
		if err := srv.AddListener(b.tlsl); err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("mqtt tls listener on %s: %w", opts.TLSAddr, err)
		}
	}
	if opts.WSAddr != "" {
		// mochi's WebSocket listener binds inside Serve; check the address now
		// so a taken port fails at start-up with a clear error.
		if ln, err := net.Listen("tcp", opts.WSAddr); err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("mqtt websocket listener on %s: %w", opts.WSAddr, err)
		} else {
			ln.Close()
		}
		if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: opts.WSAddr, TLSConfig: opts.TLS})); err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("mqtt websocket listener on %s: %w", opts.WSAddr, err)
		}
	}
	return b, nil
}

func (b *Broker) closeListeners() {
	b.srv.Listeners.CloseAll(func(string) {})
}

// Serve starts accepting connections; it returns at once.
func (b *Broker) Serve() error {
	return b.srv.Serve()
}

// Close disconnects every client and stops the listeners.
func (b *Broker) Close() error {
	select {
	case <-b.closed:
		return nil
	default:
		close(b.closed)
	}
	// mochi v2.7.9's own Close can deadlock when a client disconnects at
	// that moment: Clients.GetByListener read-locks the client map twice
	// (through Len), and a Delete waiting in between blocks both. So the
	// listeners are closed and their clients disconnected here, with one
	// read lock (GetAll), and removed before the server's Close runs.
	for _, id := range []string{"tcp", "tls", "ws"} {
		b.srv.Listeners.Close(id, b.disconnectClients)
		b.srv.Listeners.Delete(id)
	}
	return b.srv.Close()
}

// disconnectClients disconnects the clients of a listener as the server shuts down.
func (b *Broker) disconnectClients(listener string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			// DISCONNECT, then close: with PassiveClientDisconnect mochi
			// would wait for the client to close.
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			cl.Stop(packets.ErrServerShuttingDown)
		}
	}
}

// TLSAddr is the bound MQTT over TLS address ("" when it is off).
func (b *Broker) TLSAddr() string {
	if b.tlsl == nil {
		return ""
	}
	return b.tlsl.Address()
}

// Addr is the bound MQTT over TCP address ("" when TCP is off).
func (b *Broker) Addr() string {
	if b.tcp == nil {
		return ""
	}
	return b.tcp.Address()
}

// Publish sends a message from the service itself (results, catalog,
// status). It bypasses the ACL; the service's own hooks ignore it.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	return b.srv.Publish(topic, payload, retain, qos)
}

// Send publishes a reply (a result, an error or a stream event): with
// MQTT 5 properties when the reply carries them (the correlation data, the
// content type, the status as a user property), else as a plain message.
func (b *Broker) Send(p pipeline.Reply, qos byte) error {
	if !p.Properties {
		return b.srv.Publish(p.Topic, p.Payload, false, qos)
	}
	cl, ok := b.srv.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return errors.New("broker has no inline client")
	}
	return b.srv.InjectPacket(cl, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   p.Topic,
		Payload:     p.Payload,
		PacketID:    uint16(qos),
		Properties: packets.Properties{
			CorrelationData: p.CorrelationData,
			ContentType:     p.ContentType,
			User:            []packets.UserProperty{{Key: pipeline.StatusProperty, Val: p.StatusValue()}},
		},
	})
}

// Clients is the number of connected MQTT clients, the service's own excluded.
func (b *Broker) Clients() int {
	n := 0
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			n++
		}
	}
	return n
}

// margin is how much room a worker's outbound queue (or its store of
// unacknowledged messages) must have for the broker to hand it one more
// request, so that the publishers that checked it at the same moment fit:
// an eighth of it, at least 32, at most half.
func margin(capacity int) int { return min(max(32, capacity/8), capacity/2) }

// workerQueues counts the clients subscribed to a request topic (the
// remote workers; every one of them receives every request), and names
// one that is too far behind to take another: mochi would drop the request
// on its way there, when the client's outbound queue is full or when it
// holds Capabilities.MaximumInflight unacknowledged QoS 1 messages.
func (b *Broker) workerQueues(topic string) (workers int, full string) {
	subs := b.srv.Topics.Subscribers(topic)
	maxInflight := int(b.srv.Options.Capabilities.MaximumInflight)
	check := func(id string) {
		workers++
		if cl, ok := b.srv.Clients.Get(id); ok && full == "" {
			n, c := cl.WritesPending()
			if n > c-margin(c) || cl.State.Inflight.Len() > maxInflight-margin(maxInflight) {
				full = id
			}
		}
	}
	for id := range subs.Subscriptions {
		check(id)
	}
	for _, members := range subs.Shared {
		for id := range members {
			check(id)
		}
	}
	return workers + len(subs.InlineSubscriptions), full
}

// HasSubscribers reports whether any client or the service itself is
// subscribed to a filter matching topic.
func (b *Broker) HasSubscribers(topic string) bool {
	subs := b.srv.Topics.Subscribers(topic)
	return len(subs.Shared) > 0 || len(subs.Subscriptions) > 0 || len(subs.InlineSubscriptions) > 0
}

// Ready reports whether the broker is serving.
func (b *Broker) Ready(context.Context) error {
	select {
	case <-b.closed:
		return errors.New("broker is closed")
	default:
		return nil
	}
}
