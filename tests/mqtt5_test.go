package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/fxamacker/cbor/v2"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// client5 is an MQTT 5 client (github.com/eclipse/paho.golang) whose
// received messages arrive on msgs.
type client5 struct {
	c    *paho.Client
	msgs chan *paho.Publish
}

func connect5(t *testing.T, addr, id string) *client5 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c5 := &client5{msgs: make(chan *paho.Publish, 64)}
	c5.c = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c5.msgs <- pr.Packet
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ca, err := c5.c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect %s: %v %+v", id, err, ca)
	}
	t.Cleanup(func() {
		_ = c5.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		<-c5.c.Done()
	})
	return c5
}

func (c5 *client5) subscribe(t *testing.T, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c5.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}

func (c5 *client5) publish(t *testing.T, p *paho.Publish) *paho.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := c5.c.Publish(ctx, p)
	if resp == nil {
		t.Fatalf("publish on %s: no PUBACK: %v", p.Topic, err)
	}
	return resp
}

func (c5 *client5) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case m := <-c5.msgs:
		return m
	case <-time.After(wait):
		t.Fatal("no message within", wait)
		return nil
	}
}

func userProp(p *paho.Publish, key string) string {
	if p.Properties == nil {
		return ""
	}
	return p.Properties.User.Get(key)
}

// TestMQTT5RequestResponse: Response Topic and Correlation Data are honoured,
// the status travels as a user property, a throttled QoS 1 publish gets
// PUBACK 0x97, and v2 takes CBOR and batches.
func TestMQTT5RequestResponse(t *testing.T) {
	cfg := testConfig(t)
	smallBucket(&cfg, 0.5, 4)
	svc := startService(t, cfg)
	c := connect5(t, svc.MQTTAddr(), "v5-dev")
	c.subscribe(t, "replies/v5-dev")

	req := func(ver string, payload []byte, corr string, props func(*paho.PublishProperties)) *paho.PublishResponse {
		p := &paho.Publish{Topic: topics.Request(cfg.Prefix, ver, "v5-dev", "anomaly"), QoS: 1, Payload: payload,
			Properties: &paho.PublishProperties{ResponseTopic: "replies/v5-dev", CorrelationData: []byte(corr)}}
		if props != nil {
			props(p.Properties)
		}
		return c.publish(t, p)
	}

	if resp := req("v1", mustJSON(t, sample("r5", 20)), "corr-1", nil); resp.ReasonCode != 0 {
		t.Errorf("PUBACK reason %#x", resp.ReasonCode)
	}
	m := c.next(t)
	var r api.Result
	if err := json.Unmarshal(m.Payload, &r); err != nil || r.Status != 200 || r.ID != "r5" {
		t.Fatalf("reply %s: %v", m.Payload, err)
	}
	if m.Topic != "replies/v5-dev" || string(m.Properties.CorrelationData) != "corr-1" || userProp(m, "status") != "200" {
		t.Errorf("reply on %s corr %q status %q", m.Topic, m.Properties.CorrelationData, userProp(m, "status"))
	}

	// v2: a CBOR batch of two inputs, answered in CBOR.
	body, err := cbor.Marshal(map[string]any{"id": "b1", "inputs": []any{
		map[string]any{"sensor": "t", "value": 1.5},
		map[string]any{"sensor": "t", "value": "bad"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	req("v2", body, "corr-2", func(p *paho.PublishProperties) { p.ContentType = api.ContentTypeCBOR })
	m = c.next(t)
	if m.Properties.ContentType != api.ContentTypeCBOR {
		t.Errorf("content type %q", m.Properties.ContentType)
	}
	var br struct {
		ID      string `cbor:"id"`
		Status  int    `cbor:"status"`
		Outputs []struct {
			Status int `cbor:"status"`
		} `cbor:"outputs"`
	}
	if err := cbor.Unmarshal(m.Payload, &br); err != nil || br.ID != "b1" || len(br.Outputs) != 2 || br.Outputs[0].Status != 200 || br.Outputs[1].Status != 422 {
		t.Fatalf("CBOR batch reply %+v: %v", br, err)
	}

	// Malformed CBOR, and CBOR on v1, are clear 400s (and cost nothing).
	req("v2", []byte{0xa1, 0x62, 0x69}, "corr-bad", func(p *paho.PublishProperties) { p.ContentType = api.ContentTypeCBOR })
	if m := c.next(t); userProp(m, "status") != "400" || string(m.Properties.CorrelationData) != "corr-bad" {
		t.Errorf("malformed CBOR: status %q", userProp(m, "status"))
	}
	req("v1", body, "corr-v1", func(p *paho.PublishProperties) { p.ContentType = api.ContentTypeCBOR })
	if m := c.next(t); userProp(m, "status") != "400" || !json.Valid(m.Payload) {
		t.Errorf("CBOR on v1: status %q, a JSON reply: %q", userProp(m, "status"), m.Payload)
	}

	// The bucket (burst 4) is down to 1 token after 1 + 2: one more passes,
	// the next is throttled: PUBACK 0x97 and a 429 in-band.
	req("v1", mustJSON(t, sample("r6", 20)), "corr-3", nil)
	c.next(t)
	if resp := req("v1", mustJSON(t, sample("r7", 20)), "corr-4", nil); resp.ReasonCode != 0x97 {
		t.Errorf("throttled PUBACK reason %#x, want 0x97", resp.ReasonCode)
	}
	m = c.next(t)
	if err := json.Unmarshal(m.Payload, &r); err != nil || r.Status != 429 || userProp(m, "status") != "429" || string(m.Properties.CorrelationData) != "corr-4" {
		t.Errorf("429 reply %s status prop %q", m.Payload, userProp(m, "status"))
	}

	// A response topic inside another device's results is not honoured:
	// the reply goes to the sender's own result topic instead.
	c.subscribe(t, topics.ResultFilter(cfg.Prefix, "", "v5-dev", ""))
	p := &paho.Publish{Topic: topics.Request(cfg.Prefix, "v1", "v5-dev", "nope"), QoS: 1, Payload: mustJSON(t, sample("x", 1)),
		Properties: &paho.PublishProperties{ResponseTopic: topics.Result(cfg.Prefix, "v1", "victim", "anomaly"), CorrelationData: []byte("c")}}
	c.publish(t, p)
	if m := c.next(t); m.Topic != topics.Result(cfg.Prefix, "v1", "v5-dev", "nope") {
		t.Errorf("reply went to %s", m.Topic)
	}
}

// TestMosquittoRR drives request/response with Debian's mosquitto_rr, an
// MQTT 5 client nobody here wrote.
func TestMosquittoRR(t *testing.T) {
	requireTool(t, "/usr/bin/mosquitto_rr", "mosquitto-clients")
	cfg := testConfig(t)
	svc := startService(t, cfg)
	host, port, _ := strings.Cut(svc.MQTTAddr(), ":")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mosquitto_rr", "-h", host, "-p", port, "-V", "mqttv5", "-i", "rr-dev", "-q", "1", "-W", "10",
		"-t", topics.Request(cfg.Prefix, "v1", "rr-dev", "anomaly"), "-e", "rr-dev/replies",
		"-m", `{"id":"rr-1","input":{"sensor":"temp","value":19}}`)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_rr: %v: %s", err, out)
	}
	var r api.Result
	if err := json.Unmarshal(bytes.TrimSpace(out), &r); err != nil || r.Status != 200 || r.ID != "rr-1" {
		t.Fatalf("mosquitto_rr printed %q: %v", out, err)
	}
}

// TestConnackTellsLimits: an MQTT 5 client learns the Maximum Packet Size
// and, when it asks for a longer keep-alive than the broker allows, the
// Server Keep Alive it must use.
func TestConnackTellsLimits(t *testing.T) {
	cfg := testConfig(t)
	svc := startService(t, cfg)
	for _, c := range []struct {
		ask, want uint16
		told      bool
	}{{120, 60, true}, {0, 60, true}, {30, 30, false}} {
		conn, err := net.Dial("tcp", svc.MQTTAddr())
		if err != nil {
			t.Fatal(err)
		}
		cl := paho.NewClient(paho.ClientConfig{Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		ca, err := cl.Connect(ctx, &paho.Connect{ClientID: fmt.Sprint("ka-", c.ask), CleanStart: true, KeepAlive: c.ask})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if ca.Properties == nil || ca.Properties.MaximumPacketSize == nil || *ca.Properties.MaximumPacketSize != uint32(cfg.MQTT.MaxPacketSize) {
			t.Errorf("keepalive %d: CONNACK without the maximum packet size: %+v", c.ask, ca.Properties)
		}
		got := ca.Properties != nil && ca.Properties.ServerKeepAlive != nil
		if got != c.told || (got && *ca.Properties.ServerKeepAlive != c.want) {
			t.Errorf("keepalive %d: server keep-alive %v", c.ask, ca.Properties.ServerKeepAlive)
		}
		_ = cl.Disconnect(&paho.Disconnect{})
		<-cl.Done()
	}
}
