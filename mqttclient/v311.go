package mqttclient

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// disconnectQuiesce is how long a 3.1.1 Close waits for work in flight, in ms.
const disconnectQuiesce = 250

// v311 is an MQTT 3.1.1 connection: eclipse/paho.mqtt.golang with
// reconnects off.
type v311 struct {
	cl mqtt.Client
}

func dialV311(ctx context.Context, u *url.URL, o Options, lost func(error)) (impl, error) {
	opts := mqtt.NewClientOptions().
		AddBroker(u.String()).
		SetClientID(o.ClientID).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		// OnMessage is called for one message after the other, in arrival
		// order, on paho's routing goroutine.
		SetOrderMatters(true).
		SetKeepAlive(o.KeepAlive).
		SetConnectTimeout(o.ConnectTimeout).
		SetWriteTimeout(o.ConnectTimeout).
		SetStore(copyingStore{mqtt.NewMemoryStore()}).
		SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
			return dial(ctx, u, o.TLS)
		}).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			o.OnMessage(Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retain: m.Retained()})
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost(err) })
	if o.Username != "" {
		opts.SetUsername(o.Username)
	}
	if o.Password != "" {
		opts.SetPassword(o.Password)
	}
	if w := o.Will; w != nil {
		opts.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retain)
	}
	cl := mqtt.NewClient(opts)
	tok := cl.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// paho finishes the attempt within its connect timeout; wait so
		// none of its goroutines outlives the call.
		tok.WaitTimeout(o.ConnectTimeout + time.Second)
		if cl.IsConnectionOpen() {
			cl.Disconnect(0)
		}
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	return &v311{cl: cl}, nil
}

func (c *v311) subscribe(ctx context.Context, subs []Subscription) error {
	filters := make(map[string]byte, len(subs))
	for _, s := range subs {
		filters[s.Filter] = s.QoS
	}
	// Messages reach the default publish handler (Options.OnMessage).
	tok := c.cl.SubscribeMultiple(filters, nil)
	if err := await(ctx, tok); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("subscribe to %s: the broker refused it", f)
			}
		}
	}
	return nil
}

func (c *v311) publish(ctx context.Context, m Message, wait bool) error {
	tok := c.cl.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	if !wait {
		// paho writes publishes in the order they are made; the token
		// completes on its own.
		select {
		case <-tok.Done():
			return tok.Error()
		default:
			return nil
		}
	}
	if err := await(ctx, tok); err != nil {
		return fmt.Errorf("publish on %s: %w", m.Topic, err)
	}
	return nil
}

func (c *v311) disconnect() error {
	c.cl.Disconnect(disconnectQuiesce)
	return nil
}

// await waits for tok or ctx.
func await(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// copyingStore is paho's memory store, keeping a copy of each PUBLISH
// instead of the packet being sent. paho sets the DUP flag of stored
// publishes in place when it resends them, racing with the writer of the
// very packet; with a copy in the store there is no shared packet.
type copyingStore struct{ mqtt.Store }

func (s copyingStore) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok {
		c := *p
		m = &c
	}
	s.Store.Put(key, m)
}
