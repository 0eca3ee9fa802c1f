package mqttclient

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
)

// v5 is an MQTT 5 connection: eclipse/paho.golang's single-connection client.
type v5 struct {
	cl *paho.Client
}

func dialV5(ctx context.Context, u *url.URL, o Options, lost func(error)) (impl, error) {
	nc, err := dial(ctx, u, o.TLS)
	if err != nil {
		return nil, err
	}
	var started sync.WaitGroup // lost is reported only once Connect has returned
	started.Add(1)
	report := func(err error) {
		started.Wait()
		lost(err)
	}
	cl := paho.NewClient(paho.ClientConfig{
		ClientID: o.ClientID,
		// Every write is one packet from one goroutine at a time (TLS and
		// WebSocket connections are not safe for concurrent writes).
		Conn: packets.NewThreadSafeConn(nc),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			o.OnMessage(fromPaho(pr.Packet))
			return true, nil
		}},
		OnClientError:      func(err error) { go report(err) },
		OnServerDisconnect: func(d *paho.Disconnect) { go report(disconnectError(d)) },
		PacketTimeout:      o.ConnectTimeout,
	})
	cp := &paho.Connect{
		ClientID:   o.ClientID,
		KeepAlive:  uint16(min(o.KeepAlive/time.Second, 65535)),
		CleanStart: true,
	}
	if len(o.ConnectUser) > 0 {
		cp.Properties = &paho.ConnectProperties{User: toPahoUser(o.ConnectUser)}
	}
	if o.Username != "" {
		cp.UsernameFlag, cp.Username = true, o.Username
	}
	if o.Password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(o.Password)
	}
	if w := o.Will; w != nil {
		cp.WillMessage = &paho.WillMessage{Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain}
		cp.WillProperties = &paho.WillProperties{
			ContentType:   w.Properties.ContentType,
			MessageExpiry: expirySeconds(w.Properties.MessageExpiry),
			User:          toPahoUser(w.Properties.User),
		}
	}
	ca, err := cl.Connect(ctx, cp)
	if err != nil {
		started.Done()
		if ca != nil {
			return nil, fmt.Errorf("the broker refused the connection: reason code 0x%02x %s", ca.ReasonCode, reasonString(ca.Properties))
		}
		return nil, err
	}
	started.Done()
	go func() {
		<-cl.Done()
		report(errors.New("connection closed"))
	}()
	return &v5{cl: cl}, nil
}

func reasonString(p *paho.ConnackProperties) string {
	if p == nil || p.ReasonString == "" {
		return ""
	}
	return "(" + p.ReasonString + ")"
}

func disconnectError(d *paho.Disconnect) error {
	reason := ""
	if d.Properties != nil && d.Properties.ReasonString != "" {
		reason = ": " + d.Properties.ReasonString
	}
	return fmt.Errorf("the broker disconnected the client: reason code 0x%02x%s", d.ReasonCode, reason)
}

func (c *v5) subscribe(ctx context.Context, subs []Subscription) error {
	s := &paho.Subscribe{}
	for _, sub := range subs {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: sub.Filter, QoS: sub.QoS, NoLocal: sub.NoLocal})
	}
	sa, err := c.cl.Subscribe(ctx, s)
	if sa != nil {
		for i, r := range sa.Reasons {
			if r >= 0x80 && i < len(subs) {
				return fmt.Errorf("subscribe to %s: the broker refused it (reason code 0x%02x)", subs[i].Filter, r)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	return nil
}

func (c *v5) publish(ctx context.Context, m Message, wait bool) error {
	p := &paho.Publish{
		Topic:   m.Topic,
		Payload: m.Payload,
		QoS:     m.QoS,
		Retain:  m.Retain,
		Properties: &paho.PublishProperties{
			ResponseTopic:   m.Properties.ResponseTopic,
			CorrelationData: m.Properties.CorrelationData,
			ContentType:     m.Properties.ContentType,
			MessageExpiry:   expirySeconds(m.Properties.MessageExpiry),
			User:            toPahoUser(m.Properties.User),
		},
	}
	method := paho.PublishMethod_Blocking
	if !wait {
		method = paho.PublishMethod_AsyncSend
	}
	_, err := c.cl.PublishWithOptions(ctx, p, paho.PublishOptions{Method: method})
	if err != nil {
		return fmt.Errorf("publish on %s: %w", m.Topic, err)
	}
	return nil
}

func (c *v5) disconnect() error {
	err := c.cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
	<-c.cl.Done()
	return err
}

func fromPaho(p *paho.Publish) Message {
	m := Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retain: p.Retain}
	if pp := p.Properties; pp != nil {
		m.Properties = Properties{
			ResponseTopic:   pp.ResponseTopic,
			CorrelationData: pp.CorrelationData,
			ContentType:     pp.ContentType,
		}
		for _, u := range pp.User {
			m.Properties.User = append(m.Properties.User, UserProperty{Key: u.Key, Value: u.Value})
		}
		if pp.MessageExpiry != nil {
			m.Properties.MessageExpiry = time.Duration(*pp.MessageExpiry) * time.Second
		}
	}
	return m
}

func toPahoUser(us []UserProperty) paho.UserProperties {
	var out paho.UserProperties
	for _, u := range us {
		out = append(out, paho.UserProperty{Key: u.Key, Value: u.Value})
	}
	return out
}
