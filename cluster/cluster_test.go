package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

func TestNames(t *testing.T) {
	n := NamesFor("mqttinfer")
	if n.RequestStream() != "MQTTINFER_mqttinfer_REQ" || n.RequestSubject(7, "cam.1") != "mqttinfer.mqttinfer.req.7.cam~1" ||
		n.PartitionSubjects(7) != "mqttinfer.mqttinfer.req.7.*" {
		t.Errorf("names: %s %s %s", n.RequestStream(), n.RequestSubject(7, "cam.1"), n.PartitionSubjects(7))
	}
	// A prefix with characters a subject token cannot have is made one,
	// and kept apart from the prefix that differs only there.
	a, b := NamesFor("acme/plant.1"), NamesFor("acme_plant_1")
	if a.ResultStream() == b.ResultStream() || strings.ContainsAny(a.ResultStream(), "/. ") {
		t.Errorf("names of distinct prefixes: %s, %s", a.ResultStream(), b.ResultStream())
	}
	if got := n.ResultSubject("cam.01"); got != "mqttinfer.mqttinfer.res.cam~01" {
		t.Errorf("result subject of a device id with a dot: %s", got)
	}
	// Devices spread over the partitions, each always in the same one.
	seen := map[int]bool{}
	for i := range 1000 {
		d := "dev-" + string(rune('a'+i%26)) + strings.Repeat("x", i%7) + string(rune('0'+i%10))
		p := Partition(d, 32)
		if p != Partition(d, 32) || p < 0 || p >= 32 {
			t.Fatalf("partition of %s: %d", d, p)
		}
		seen[p] = true
	}
	if len(seen) < 30 {
		t.Errorf("1000 devices fall in %d of 32 partitions", len(seen))
	}
}

func TestRequestMessageRoundTrip(t *testing.T) {
	top, err := topics.Parse("mqttinfer", "mqttinfer/v2/req/cam-1/detect")
	if err != nil {
		t.Fatal(err)
	}
	r := &pipeline.Request{Topic: top, Payload: []byte{0xa1, 0x61, 0x78, 0x01}, QoS: 1, Received: time.Unix(1700000000, 5),
		ContentType: "application/cbor", ResponseTopic: "replies/cam-1", CorrelationData: []byte{0, 1, 2, 0xff}}
	got, key, err := parseRequest("mqttinfer", requestMsg("s", r, "k1", "e1"))
	if err != nil || key != "k1" {
		t.Fatal(key, err)
	}
	if got.Topic != r.Topic || string(got.Payload) != string(r.Payload) || got.QoS != 1 || !got.Received.Equal(r.Received) ||
		got.ContentType != r.ContentType || got.ResponseTopic != r.ResponseTopic || string(got.CorrelationData) != string(r.CorrelationData) {
		t.Errorf("round trip: %+v, want %+v", got, r)
	}
	// A response topic that is another device's is not kept.
	m := requestMsg("s", r, "k1", "e1")
	m.Header.Set(hdrResponse, "mqttinfer/v2/res/cam-2/detect")
	if got, _, _ := parseRequest("mqttinfer", m); got.ResponseTopic != "" {
		t.Errorf("another device's response topic kept: %q", got.ResponseTopic)
	}
	// A message without a request topic is refused.
	m.Header.Set(hdrTopic, "mqttinfer/v2/res/cam-1/detect")
	if _, _, err := parseRequest("mqttinfer", m); err == nil {
		t.Error("a result topic was taken for a request")
	}
}

// TestStatusMirror: an edge publishes every node's status from the status
// bucket as retained messages on its broker, and marks offline a node
// that stopped refreshing its status.
func TestStatusMirror(t *testing.T) {
	every, stale := statusEvery, statusStale
	statusEvery, statusStale = 100*time.Millisecond, 500*time.Millisecond
	t.Cleanup(func() { statusEvery, statusStale = every, stale })

	nc, err := Connect(testenv.StartNATS(t, 1).URL(), "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e, err := NewEdge(EdgeOptions{Options: Options{Prefix: "mqttinfer", Partitions: 4}, Conn: nc, Node: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{TCPAddr: "127.0.0.1:0", Dispatcher: e, Sessions: e})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(run, b) }()
	t.Cleanup(func() { stop(); <-done })

	// A worker's status, put as a worker does; it is never refreshed.
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx, NamesFor("mqttinfer").StatusBucket())
	if err != nil {
		t.Fatal(err)
	}
	if err := putStatus(ctx, kv, worker.Status{Node: "w9", State: "online", Transport: "cluster"}); err != nil {
		t.Fatal(err)
	}
	states := make(chan string, 16)
	c, err := mqttclient.Dial(ctx, mqttclient.Options{URL: "tcp://" + b.Addr(), ClientID: "obs", OnMessage: func(m mqttclient.Message) {
		var st worker.Status
		if json.Unmarshal(m.Payload, &st) == nil && st.Node == "w9" && m.Topic == topics.Status("mqttinfer", topics.Latest(), "w9") {
			states <- st.State
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(ctx, mqttclient.Subscription{Filter: topics.NodeStatusFilter("mqttinfer", topics.Latest()), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"online", "offline"} {
		select {
		case got := <-states:
			if got != want {
				t.Fatalf("w9 is %s, want %s", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %s status for w9", want)
		}
	}
}

// TestFullQueue: with no worker, the request stream holds max_queued
// requests; the next is refused 503 at once rather than left to wait.
func TestFullQueue(t *testing.T) {
	nc, err := Connect(testenv.StartNATS(t, 1).URL(), "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e, err := NewEdge(EdgeOptions{Options: Options{Prefix: "mqttinfer", Partitions: 4, MaxQueued: 3}, Conn: nc, Node: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	top, _ := topics.Parse("mqttinfer", "mqttinfer/v1/req/d1/anomaly")
	for i := range 4 {
		r := &pipeline.Request{Topic: top, Payload: []byte(`{"input":{}}`), QoS: 1, Received: time.Now()}
		err := e.Dispatch(r)
		var ae *api.Error
		switch {
		case i < 3 && err != nil:
			t.Fatalf("request %d refused: %v", i, err)
		case i == 3 && (!errors.As(err, &ae) || ae.Type != api.Overloaded):
			t.Fatalf("request past the queue: %v, want 503 overloaded", err)
		}
	}
}

// TestSetupOlderLayout: a request stream made by an older mqttinfer (one
// subject per partition) is taken over when empty, and refused, saying
// why, while it still holds requests the new subjects would strand.
func TestSetupOlderLayout(t *testing.T) {
	nc, err := Connect(testenv.StartNATS(t, 1).URL(), "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := NamesFor("mqttinfer")
	old := jetstream.StreamConfig{Name: n.RequestStream(), Subjects: []string{"mqttinfer.mqttinfer.req.*"},
		Retention: jetstream.WorkQueuePolicy, Metadata: map[string]string{metaPartitions: "4"}}
	stream, err := js.CreateStream(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "mqttinfer.mqttinfer.req.1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	o := Options{Prefix: "mqttinfer", Partitions: 4}
	if _, err := Setup(ctx, nc, js, o); !isConfigError(err) || !strings.Contains(err.Error(), "holds 1 requests queued by an older mqttinfer") {
		t.Fatalf("setup over a stream with older requests: %v", err)
	}
	if err := stream.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(ctx, nc, js, o); err != nil {
		t.Fatalf("setup over an empty older stream: %v", err)
	}
	s, err := js.Stream(ctx, n.RequestStream())
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Subjects; len(got) != 1 || got[0] != "mqttinfer.mqttinfer.req.*.*" {
		t.Errorf("subjects %v after the upgrade", got)
	}
}
