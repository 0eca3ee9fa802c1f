package devicesim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// ChatOptions configure Chat. Zero values take the defaults noted.
type ChatOptions struct {
	// Broker is the MQTT broker URL (default "tcp://127.0.0.1:1883").
	Broker string
	// Prefix is the service's topic prefix (default "mqttinfer").
	Prefix string
	// Version is the API version (default "v1").
	Version string
	// Device is the client id the question is asked as (default "chat-" +
	// 8 random hex digits); it is also the device id of the request.
	Device string
	// Username and Password, when the broker wants them (with auth on, the
	// device id is the username).
	Username string
	Password string
	// TLSConfig configures ssl://, tls://, mqtts:// and wss:// brokers (a
	// private CA, a client certificate); nil = the system's roots.
	TLSConfig *tls.Config
	// Model is the model to ask (default "chat").
	Model string
	// System is an optional system message.
	System string
	// MaxTokens caps the answer; 0 leaves it to the service.
	MaxTokens int
	// Timeout bounds the whole exchange (default 2 m).
	Timeout time.Duration
	// Usage, when set, gets a line with the token usage at the end.
	Usage io.Writer
}

// ErrCanceled is returned by Chat when its context ended: the question was
// canceled with the service (which stops the model) before the answer ended.
var ErrCanceled = errors.New("chat: canceled")

// Chat asks a question over MQTT as a device and writes the answer to out
// token by token as the stream events arrive: the request goes to the
// device's request topic with "stream": true, and delta events come back on
// its result topic (duplicates after a QoS 1 redelivery are dropped by seq).
// When ctx ends first, Chat publishes a cancel for the request, which stops
// the model, and returns ErrCanceled.
func Chat(ctx context.Context, opts ChatOptions, prompt string, out io.Writer) error {
	if opts.Prefix == "" {
		opts.Prefix = topics.DefaultPrefix
	}
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if opts.Model == "" {
		opts.Model = "chat"
	}
	if opts.Device == "" {
		opts.Device = randomClientID("chat-")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	if err := topics.ValidID(opts.Device); err != nil {
		return fmt.Errorf("chat: device: %w", err)
	}
	cl, err := dial(ctx, conn{broker: opts.Broker, clientID: opts.Device, username: opts.Username, password: opts.Password, tls: opts.TLSConfig})
	if err != nil {
		return fmt.Errorf("chat: %w", err)
	}
	defer cl.Disconnect(disconnectQuiesce)

	events := make(chan []byte, 256)
	resTopic := topics.Result(opts.Prefix, opts.Version, opts.Device, opts.Model)
	if err := subscribe(ctx, cl, resTopic, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case events <- m.Payload():
		default: // a stream far ahead of the printer: dropped, and seq shows the gap
		}
	}); err != nil {
		return fmt.Errorf("chat: %w", err)
	}

	id := randomClientID("q-")
	input := map[string]any{"prompt": prompt}
	if opts.System != "" {
		input = map[string]any{"messages": []map[string]string{{"role": "system", "content": opts.System}, {"role": "user", "content": prompt}}}
	}
	if opts.MaxTokens > 0 {
		input["max_tokens"] = opts.MaxTokens
	}
	reqTopic := topics.Request(opts.Prefix, opts.Version, opts.Device, opts.Model)
	if err := publishJSON(cl, reqTopic, map[string]any{"id": id, "input": input, "stream": true}); err != nil {
		return fmt.Errorf("chat: %w", err)
	}

	timeout := time.NewTimer(opts.Timeout)
	defer timeout.Stop()
	next := 0 // the seq expected next
	canceled := false
	for {
		var payload []byte
		select {
		case payload = <-events:
		case <-ctx.Done():
			if canceled {
				return ErrCanceled
			}
			// Cancel with the service, then wait a moment for its 499 so the
			// model is known to have stopped.
			canceled = true
			_ = publishJSON(cl, reqTopic, map[string]any{"id": id, "cancel": true})
			timeout.Reset(2 * time.Second)
			ctx = context.Background()
			continue
		case <-timeout.C:
			if canceled {
				return ErrCanceled
			}
			return fmt.Errorf("chat: no complete answer within %s", opts.Timeout)
		}
		var ev struct {
			api.StreamEvent
			Event *string `json:"event"` // nil: a plain result (an error before any stream)
		}
		if err := json.Unmarshal(payload, &ev); err != nil || ev.ID != id {
			continue // not ours, or not JSON
		}
		if ev.Event == nil {
			var r api.Result
			if json.Unmarshal(payload, &r) == nil && r.Error != nil {
				return chatError(r.Status, r.Error)
			}
			if r.Status == api.StatusOK {
				var o struct {
					Text string `json:"text"`
				}
				_ = json.Unmarshal(r.Output, &o)
				_, err := fmt.Fprintln(out, o.Text)
				return err
			}
			continue
		}
		if ev.Seq < next {
			continue // a duplicate after a QoS 1 redelivery
		}
		next = ev.Seq + 1
		switch *ev.Event {
		case api.EventDelta:
			var d struct {
				Text string `json:"text"`
			}
			if json.Unmarshal(ev.Delta, &d) == nil {
				if _, err := io.WriteString(out, d.Text); err != nil {
					return err
				}
			}
		case api.EventDone:
			_, err := fmt.Fprintln(out)
			if opts.Usage != nil && len(ev.Usage) > 0 {
				fmt.Fprintf(opts.Usage, "usage: %s\n", ev.Usage)
			}
			return err
		case api.EventError:
			fmt.Fprintln(out)
			if ev.Status == api.Canceled.Status() && canceled {
				return ErrCanceled
			}
			return chatError(ev.Status, ev.Error)
		}
	}
}

func chatError(status int, e *api.Error) error {
	if e == nil {
		return fmt.Errorf("chat: status %d", status)
	}
	msg := fmt.Sprintf("chat: %d %s: %s", status, e.Type, e.Message)
	if e.RetryAfterMS > 0 {
		msg += fmt.Sprintf(" (retry after %d ms)", e.RetryAfterMS)
	}
	return errors.New(msg)
}

func publishJSON(cl mqtt.Client, topic string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tok := cl.Publish(topic, 1, false, b)
	if !tok.WaitTimeout(writeTimeout) {
		return fmt.Errorf("publish on %s: no PUBACK within %s", topic, writeTimeout)
	}
	return tok.Error()
}
