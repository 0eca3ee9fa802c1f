package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/service"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

// The cluster's own promises, beyond the contract every shape keeps: a
// device and its watchers may be on different edges, and a device that
// moves to another edge takes its missed results and its bucket along.

// TestClusterWatcherOnOtherEdge: a device on edge A, a watcher on edge B:
// the watcher sees the device's results, and the catalog is the same on
// both edges.
func TestClusterWatcherOnOtherEdge(t *testing.T) {
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	edges := startCluster(t, cfg, 2, 2)
	w := dialDevice(t, edges[1].MQTTAddr(), "watcher-b", mqttclient.V5, topics.ResultFilter("mqttinfer", "", "", ""))
	d := dialDevice(t, edges[0].MQTTAddr(), "sensor-a", mqttclient.V311)
	for i := range 5 {
		d.ask(t, "anomaly", sample(fmt.Sprint(i), 20))
	}
	var got []string
	for range 5 {
		r := d.result(t)
		got = append(got, r.ID)
	}
	var seen []string
	for len(seen) < 5 {
		m := w.next(t)
		if m.Topic != topics.Result("mqttinfer", "v1", "sensor-a", "anomaly") {
			continue
		}
		var r struct{ ID string }
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, r.ID)
	}
	if !slices.Equal(got, seen) {
		t.Errorf("device got %v, watcher on the other edge saw %v", got, seen)
	}
	// Both edges show every node's retained status: the edges' and the
	// workers'.
	for _, edge := range edges {
		o := dialDevice(t, edge.MQTTAddr(), "status-watcher", mqttclient.V5, topics.NodeStatusFilter("mqttinfer", topics.Latest()))
		online := map[string]string{}
		for len(online) < 4 {
			m := o.next(t)
			var st worker.Status
			if err := json.Unmarshal(m.Payload, &st); err != nil || !m.Retain {
				t.Fatalf("%s: %s (retained %v)", m.Topic, m.Payload, m.Retain)
			}
			if st.State == "online" {
				online[st.Node] = st.Transport
			}
		}
		want := map[string]string{"edge1": "cluster_edge", "edge2": "cluster_edge", "w1": "cluster", "w2": "cluster"}
		if !maps.Equal(online, want) {
			t.Errorf("statuses on %s: %v, want %v", edge.MQTTAddr(), online, want)
		}
		o.Close()
	}
}

// gatedChat is a chat backend that answers once its gate is opened.
type gatedChat struct {
	gate chan struct{}
	seen chan struct{}
	chat *chatBackend
}

func (g *gatedChat) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.seen <- struct{}{}
	select {
	case <-g.gate:
	case <-r.Context().Done():
		return
	}
	g.chat.ServeHTTP(w, r)
}

// TestClusterDeviceMovesEdges: a device asks three slow questions on edge
// A and leaves before they are answered; it reconnects to edge B and gets
// the three answers there, once each.
func TestClusterDeviceMovesEdges(t *testing.T) {
	g := &gatedChat{gate: make(chan struct{}), seen: make(chan struct{}, 16), chat: &chatBackend{answer: "ok then"}}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	cfg.Models.Chat.BaseURL = srv.URL + "/v1"
	cfg.Models.Chat.Model = "tiny"
	edges := startCluster(t, cfg, 2, 2)
	// A watcher on B: it tells when the answers are out.
	w := dialDevice(t, edges[1].MQTTAddr(), "watcher-b", mqttclient.V5, topics.ResultFilter("mqttinfer", "", "mover-1", ""))

	a := dialDevice(t, edges[0].MQTTAddr(), "mover-1", mqttclient.V311)
	ids := []string{"q1", "q2", "q3"}
	for _, id := range ids {
		a.ask(t, "chat", map[string]any{"id": id, "input": map[string]any{"prompt": "hi"}})
	}
	// A device's questions to one model run one after the other: the
	// first is at the backend, the others wait behind it.
	select {
	case <-g.seen:
	case <-time.After(wait):
		t.Fatal("the first question never reached the chat backend")
	}
	leave(t, edges[0], a) // gone before the answers
	close(g.gate)
	for range ids {
		w.result(t)
	}

	b := dialDevice(t, edges[1].MQTTAddr(), "mover-1", mqttclient.V311)
	var got []string
	for range ids {
		r := b.result(t)
		if r.Status != 200 {
			t.Fatalf("%+v", r)
		}
		got = append(got, r.ID)
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Fatalf("on edge B the device got %v, want %v", got, ids)
	}
	// And it goes on there as usual, with nothing twice.
	b.ask(t, "anomaly", sample("after", 1))
	if r := b.result(t); r.ID != "after" || r.Status != 200 {
		t.Fatalf("after the move: %+v (a result twice?)", r)
	}
	if v := metricValue(t, edges[1].HTTPAddr(), "mqttinfer_results_replayed_total"); v != 3 {
		t.Errorf("edge B replayed %v results, want 3", v)
	}
}

// TestClusterThrottleMovesWithDevice: a device that spent its bucket on
// edge A does not get a full one by moving to edge B.
func TestClusterThrottleMovesWithDevice(t *testing.T) {
	cfg := testConfig(t)
	smallBucket(&cfg, 0.1, 5) // one token per 10 s: no refill worth counting here
	cfg.Throttle.MaxInFlight = 1000
	edges := startCluster(t, cfg, 2, 2)
	spend := func(svc *service.Service, n int) (accepted int) {
		d := dialDevice(t, svc.MQTTAddr(), "thrifty-1", mqttclient.V311)
		defer leave(t, svc, d)
		for i := range n {
			d.ask(t, "anomaly", sample(fmt.Sprint(i), 1))
		}
		for range n {
			switch r := d.result(t); r.Status {
			case 200:
				accepted++
			case 429:
			default:
				t.Fatalf("%+v", r)
			}
		}
		return accepted
	}
	if n := spend(edges[0], 7); n != 5 {
		t.Fatalf("edge A accepted %d of 7, want the burst of 5", n)
	}
	if n := spend(edges[1], 3); n != 0 {
		t.Errorf("edge B accepted %d more: the device's bucket did not move with it", n)
	}
}

// leave disconnects a device from an edge and waits until the edge has
// seen it go (and stored its cursor).
func leave(t *testing.T, edge *service.Service, d *cdev) {
	t.Helper()
	d.Close()
	waitFor(t, func() bool { return !edge.HasSubscribers(topics.Result("mqttinfer", "v1", d.id, "anomaly")) })
}

// TestClusterSimFailsOver: `mqttinfer sim` with both edges spreads its
// devices over them; when one edge stops, its devices move to the other
// and the run loses nothing.
func TestClusterSimFailsOver(t *testing.T) {
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	edges := startCluster(t, cfg, 2, 2)
	done := make(chan devicesim.Report, 1)
	go func() {
		rep, err := devicesim.Run(context.Background(), devicesim.Options{
			Broker:  edges[0].MQTTAddr() + "," + edges[1].MQTTAddr(),
			Devices: 10, Rate: 20, Duration: 4 * time.Second, QoS: 1, Drain: wait,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	// Once edge A has answered some of its devices, it stops.
	waitFor(t, func() bool {
		return metricValue(t, edges[0].HTTPAddr(), `mqttinfer_remote_requests_total{model="anomaly",status="200",version="v1"}`) >= 50
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := edges[0].Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	rep := <-done
	t.Logf("%s", rep.String())
	if rep.Failovers < 5 || rep.Lost != 0 || rep.OK != rep.Sent || rep.Connected != 10 {
		t.Errorf("sent %d, ok %d, lost %d, %d moved to the other edge (want the 5 devices of edge A)", rep.Sent, rep.OK, rep.Lost, rep.Failovers)
	}
}
