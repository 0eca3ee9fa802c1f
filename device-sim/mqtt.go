package devicesim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// DefaultBroker is the broker address used when none is given: the service's
// default MQTT over TCP listener.
const DefaultBroker = "tcp://127.0.0.1:1883"

// DefaultVersion is the API version used when none is given.
const DefaultVersion = "v1"

// defaultConnectTimeout bounds one CONNECT (dial + CONNACK).
const defaultConnectTimeout = 10 * time.Second

// writeTimeout bounds how long a publish may wait for the connection's writer;
// it also bounds how long a stuck sender can delay shutdown.
const writeTimeout = 5 * time.Second

// disconnectQuiesce is how long Disconnect waits for the DISCONNECT packet to
// be written, in milliseconds.
const disconnectQuiesce = 250

// conn describes one MQTT 3.1.1 client connection.
type conn struct {
	broker   string
	clientID string
	username string
	password string
	// tls configures ssl://, tls://, mqtts:// and wss:// brokers; nil = the
	// system's roots and no client certificate.
	tls     *tls.Config
	timeout time.Duration
	// onLost is called (on a paho goroutine) when an established connection drops.
	onLost func(error)
}

// brokerURL accepts "host:port" as well as "tcp://host:port" and paho's
// other URLs, unix:///path/to/socket included, which it leaves as they are.
func brokerURL(b string) string {
	if b == "" {
		return DefaultBroker
	}
	if !strings.Contains(b, "://") {
		return "tcp://" + b
	}
	return b
}

// brokerURLs splits a comma-separated list of brokers into their URLs
// (brokerURL of each); an empty list is the default broker.
func brokerURLs(list string) []string {
	var out []string
	for _, b := range strings.Split(list, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, brokerURL(b))
		}
	}
	if len(out) == 0 {
		out = []string{DefaultBroker}
	}
	return out
}

// dial connects c. Handlers are attached by the caller with Subscribe, never
// through a default handler. The client is connected with a clean session
// and never reconnects by itself: a simulated device that loses its
// connection stops, and the report says so.
//
// When ctx ends while the CONNECT is in flight, dial still waits (at most the
// connect timeout) for paho to finish the attempt, so that no paho goroutine
// outlives the call, and then closes the connection.
func dial(ctx context.Context, c conn) (mqtt.Client, error) {
	timeout := c.timeout
	if timeout <= 0 {
		timeout = defaultConnectTimeout
	}
	o := mqtt.NewClientOptions().
		AddBroker(brokerURL(c.broker)).
		SetClientID(c.clientID).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetOrderMatters(true). // handlers here never block, so ordered delivery costs nothing and spawns no goroutines
		SetConnectTimeout(timeout).
		SetWriteTimeout(writeTimeout).
		SetKeepAlive(30 * time.Second).
		SetPingTimeout(10 * time.Second)
	if c.username != "" {
		o.SetUsername(c.username)
	}
	if c.password != "" {
		o.SetPassword(c.password)
	}
	if c.tls != nil {
		o.SetTLSConfig(c.tls)
	}
	if c.onLost != nil {
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { c.onLost(err) })
	}
	cl := mqtt.NewClient(o)
	tok := cl.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		tok.WaitTimeout(timeout + time.Second)
		if cl.IsConnectionOpen() {
			cl.Disconnect(0)
		}
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect to %s as %q: %w (is the service or broker running there?)", brokerURL(c.broker), c.clientID, err)
	}
	return cl, nil
}

// subscribe subscribes cl to filter and waits for the SUBACK, turning a
// refused subscription (SUBACK 0x80) into an error.
func subscribe(ctx context.Context, cl mqtt.Client, filter string, qos byte, h mqtt.MessageHandler) error {
	tok := cl.Subscribe(filter, qos, h)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe to %s: %w", filter, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if code, ok := st.Result()[filter]; ok && code == 0x80 {
			return fmt.Errorf("subscribe to %s: %w", filter, errSubRefused)
		}
	}
	return nil
}

var errSubRefused = errors.New("the broker refused the subscription (not allowed for these credentials?)")

// randomClientID returns prefix followed by 8 random hex digits.
func randomClientID(prefix string) string { return prefix + randomHex(4) }

// randomHex returns n random bytes as 2n hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}
