package tests

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/cluster"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/topics"
)

// clusterLogLevel is the log level of the cluster test processes.
var clusterLogLevel = cmp.Or(os.Getenv("CLUSTER_TEST_LOG_LEVEL"), "warn")

// clusterProcs is a cluster of mqttinfer processes on this machine: three
// `mqttinfer nats`, two `mqttinfer serve --cluster` edges and three
// `mqttinfer worker --cluster`.
type clusterProcs struct {
	natsURL   string
	nats      map[string]*proc // by server name
	edges     []*proc
	edgeAddrs []string // MQTT host:port
	workers   []*proc
}

func startClusterProcs(t *testing.T, env []string) *clusterProcs {
	t.Helper()
	bin := binary(t)
	c := &clusterProcs{nats: map[string]*proc{}}
	var clients, routes []string
	for range 3 {
		clients = append(clients, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
	}
	var urls []string
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		others := strings.Join(append(append([]string{}, routes[:i]...), routes[i+1:]...), ",")
		c.nats[name] = start(t, nil, bin, "nats", "--name", name, "--listen", clients[i], "--cluster-listen", routes[i],
			"--routes", others, "--store-dir", t.TempDir(), "--log-level", "warn")
		urls = append(urls, "nats://"+clients[i])
	}
	c.natsURL = strings.Join(urls, ",")
	var ready, workerHTTP []string
	for i := range 2 {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		http := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		c.edges = append(c.edges, start(t, env, bin, "serve", "--cluster", c.natsURL, "--node", fmt.Sprintf("e%d", i+1),
			"--mqtt-addr", addr, "--ws-addr", "", "--http-addr", http, "--log-level", clusterLogLevel))
		c.edgeAddrs = append(c.edgeAddrs, addr)
		ready = append(ready, "http://"+http+"/readyz")
	}
	for i := range 3 {
		http := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		c.workers = append(c.workers, start(t, env, bin, "worker", "--cluster", c.natsURL, "--node", fmt.Sprintf("w%d", i+1),
			"--http-addr", http, "--log-level", clusterLogLevel))
		ready = append(ready, "http://"+http+"/readyz")
		workerHTTP = append(workerHTTP, http)
	}
	deadline := time.Now().Add(time.Minute)
	for _, u := range ready {
		for httpStatus(t, u) != 200 {
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready within a minute", u)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The workers have settled: each serves a share, and together every
	// partition once (a worker that joins late takes its share from the
	// others, and its devices' series start afresh there).
	for {
		total, each := 0, true
		for _, h := range workerHTTP {
			n := int(metricValue(t, h, "mqttinfer_worker_partitions"))
			total += n
			each = each && n > 0
		}
		if total == cluster.DefaultPartitions && each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the workers did not settle within a minute: %d partitions served", total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

// streamLeader is the NATS server that leads the request stream.
func (c *clusterProcs) streamLeader(t *testing.T) string {
	t.Helper()
	nc, err := nats.Connect(c.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := js.Stream(ctx, cluster.NamesFor("mqttinfer").RequestStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.Cluster.Leader
}

// explainLost logs where the backbone has each lost request (device/id):
// its results in the result stream, and the request partitions' state,
// to tell a request never stored or never run from a result never
// delivered.
func (c *clusterProcs) explainLost(t *testing.T, lost []string) {
	t.Helper()
	nc, err := nats.Connect(c.natsURL)
	if err != nil {
		t.Log("explain:", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Log("explain:", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	names := cluster.NamesFor("mqttinfer")
	res, err := js.Stream(ctx, names.ResultStream())
	if err != nil {
		t.Log("explain:", err)
		return
	}
	for _, k := range lost {
		device, id, _ := strings.Cut(k, "/")
		var found []string
		for seq := uint64(1); ; {
			m, err := res.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(names.ResultSubject(device)))
			if err != nil {
				break
			}
			if m.Header.Get("Mqttinfer-Id") == id {
				found = append(found, fmt.Sprintf("seq %d at %s status %s", m.Sequence, m.Time.Format("15:04:05.000"), m.Header.Get("Mqttinfer-Status")))
			}
			seq = m.Sequence + 1
		}
		t.Logf("lost %s: partition %d, results stored: %v", k, cluster.Partition(device, cluster.DefaultPartitions), found)
	}
	req, err := js.Stream(ctx, names.RequestStream())
	if err != nil {
		t.Log("explain:", err)
		return
	}
	if info, err := req.Info(ctx); err == nil {
		t.Logf("request stream: %d messages left, first %d, last %d", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq)
	}
	for p := range cluster.DefaultPartitions {
		if cons, err := req.Consumer(ctx, names.Consumer(p)); err == nil {
			if ci, err := cons.Info(ctx); err == nil && (ci.NumPending > 0 || ci.NumAckPending > 0 || ci.NumRedelivered > 0) {
				t.Logf("partition %d: pending %d, ack pending %d, redelivered %d, ack floor %d", p, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.AckFloor.Stream)
			}
		}
	}
}

// loadDevice is a device of the cluster's load: it publishes QoS 1
// requests, and when its edge is gone it connects to the other one and
// publishes again what was not acknowledged.
type loadDevice struct {
	id    string
	edges []string
	at    int // the edge it is on
	conn  *mqttclient.Conn
	on    func(mqttclient.Message)
	moves int
}

func (d *loadDevice) dial(ctx context.Context) error {
	var err error
	for range 2 * len(d.edges) {
		var c *mqttclient.Conn
		c, err = mqttclient.Dial(ctx, mqttclient.Options{URL: "tcp://" + d.edges[d.at], ClientID: d.id, Version: mqttclient.V311, OnMessage: d.on})
		if err == nil {
			err = c.Subscribe(ctx, mqttclient.Subscription{Filter: topics.ResultFilter("mqttinfer", "", d.id, ""), QoS: 1})
			if err == nil {
				d.conn = c
				return nil
			}
			c.Close()
		}
		d.at = (d.at + 1) % len(d.edges)
	}
	return err
}

// publish publishes until the request is acknowledged, moving to the other
// edge when its edge is gone.
func (d *loadDevice) publish(m mqttclient.Message) error {
	var err error
	for range 10 {
		// An edge waits up to 20 s for the request stream (while a NATS
		// server is replaced) before it acknowledges.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err = d.conn.Publish(ctx, m); err == nil {
			cancel()
			return nil
		}
		d.conn.Close()
		d.at = (d.at + 1) % len(d.edges)
		d.moves++
		err = d.dial(ctx)
		cancel()
		if err != nil {
			return err
		}
	}
	return err
}

// TestClusterKillUnderLoad: devices on both edges send QoS 1 requests at
// twice their rate; one process is killed with SIGKILL a third of the way
// in: a NATS server (the request stream's leader), a worker, an edge (its
// devices move to the other). No request the cluster acknowledged is
// lost, none is answered twice differently, each device's throttle stays
// within 5 % of its bucket's arithmetic, and each device's anomaly series
// is one series (restarted at most once, on the killed worker's devices).
func TestClusterKillUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load")
	}
	devices, perDevice, duration := 16, 10, 8*time.Second
	if os.Getenv("MQTTINFER_SOAK") != "" {
		devices, duration = 50, 20*time.Second
	}
	const rate, burst = 5.0, 10
	env := []string{"MQTTINFER_THROTTLE_RATE=5", "MQTTINFER_THROTTLE_BURST=10", "MQTTINFER_THROTTLE_MAX_IN_FLIGHT=1000"}
	for _, victim := range []string{"nats", "worker", "edge"} {
		t.Run(victim, func(t *testing.T) {
			c := startClusterProcs(t, env)
			var target *proc
			switch victim {
			case "nats":
				target = c.nats[c.streamLeader(t)]
			case "worker":
				target = c.workers[1]
			case "edge":
				target = c.edges[0]
			}
			type reply struct {
				at     time.Time
				status int
				output string
				n      int
			}
			var mu sync.Mutex
			replies := map[string][]reply{} // by device/index
			acked := map[string]bool{}
			var devs []*loadDevice
			for i := range devices {
				d := &loadDevice{id: fmt.Sprintf("kill-%02d", i), edges: c.edgeAddrs, at: i % 2}
				d.on = func(m mqttclient.Message) {
					var r api.Result
					if err := json.Unmarshal(m.Payload, &r); err != nil {
						t.Errorf("%s: %s", m.Topic, m.Payload)
						return
					}
					var out struct{ N int }
					_ = json.Unmarshal(r.Output, &out)
					mu.Lock()
					k := d.id + "/" + r.ID
					replies[k] = append(replies[k], reply{time.Now(), r.Status, string(r.Output), out.N})
					mu.Unlock()
				}
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				if err := d.dial(ctx); err != nil {
					t.Fatal(err)
				}
				cancel()
				t.Cleanup(func() { d.conn.Close() })
				devs = append(devs, d)
			}
			sent := make([]int, devices)
			sends := make([][]time.Time, devices) // when each request went out
			var wg sync.WaitGroup
			begin := time.Now()
			for j, d := range devs {
				wg.Go(func() {
					tick := time.NewTicker(time.Second / time.Duration(perDevice))
					defer tick.Stop()
					for i := 0; time.Since(begin) < duration; i++ {
						<-tick.C
						id := fmt.Sprint(i)
						body := sample(id, 20+float64(i%7)/10)
						body["deadline_ms"] = 60000 // served, however long the backbone takes to recover
						sends[j] = append(sends[j], time.Now())
						err := d.publish(mqttclient.Message{Topic: topics.Request("mqttinfer", "v1", d.id, "anomaly"), QoS: 1,
							Payload: mustJSON(t, body)})
						if err != nil {
							t.Errorf("%s: request %s never acknowledged: %v", d.id, id, err)
							return
						}
						mu.Lock()
						acked[d.id+"/"+id] = true
						mu.Unlock()
						sent[j] = i + 1
					}
				})
			}
			time.Sleep(duration / 3) // the load runs meanwhile; this is when the kill happens, not a wait for it
			killedAt := time.Now()
			if err := target.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-target.done
			wg.Wait()

			// Every acknowledged request is answered.
			answered := func() (missing []string) {
				mu.Lock()
				defer mu.Unlock()
				for k := range acked {
					if len(replies[k]) == 0 {
						missing = append(missing, k)
					}
				}
				return missing
			}
			deadline := time.Now().Add(90 * time.Second)
			for len(answered()) > 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if missing := answered(); len(missing) > 0 {
				slices.Sort(missing)
				c.explainLost(t, missing[:min(len(missing), 20)])
				t.Fatalf("%d acknowledged requests never answered (lost): %v", len(missing), missing[:min(len(missing), 20)])
			}
			mu.Lock()
			defer mu.Unlock()
			twice, moves, accepted, refused, restarts := 0, 0, 0, 0, 0
			var gap time.Duration // the longest wait of a device for a result, around the kill
			for j, d := range devs {
				var ats []time.Time
				moves += d.moves
				got := 0
				prevN := 0
				for i := range sent[j] {
					rs := replies[fmt.Sprintf("%s/%d", d.id, i)]
					for _, r := range rs[1:] {
						twice++
						if r.status != rs[0].status || r.output != rs[0].output {
							t.Errorf("%s/%d answered twice, differently: %d %s / %d %s", d.id, i, rs[0].status, rs[0].output, r.status, r.output)
						}
					}
					r := rs[0]
					switch r.status {
					case 200:
						got++
						ats = append(ats, r.at) // a 429 comes from the edge: it says nothing of the backbone
						// The device's series: each accepted sample counted
						// once, in order (a new owner starts it afresh).
						if r.n != prevN+1 {
							restarts++
							if victim != "worker" {
								t.Errorf("%s/%d: series count %d after %d: the anomaly state broke", d.id, i, r.n, prevN)
							}
						}
						prevN = r.n
					case 429:
						refused++
					default:
						t.Errorf("%s/%d: status %d", d.id, i, r.status)
					}
				}
				slices.SortFunc(ats, func(a, b time.Time) int { return a.Compare(b) })
				for i := 1; i < len(ats); i++ {
					if ats[i].After(killedAt) && ats[i-1].Before(killedAt.Add(5*time.Second)) {
						gap = max(gap, ats[i].Sub(ats[i-1]))
					}
				}
				accepted += got
				want := float64(bucketAdmits(sends[j][:sent[j]], rate, burst))
				if f := float64(got); f < 0.95*want || f > 1.05*want {
					t.Errorf("%s: accepted %d of %d, want %.0f ± 5%% (its bucket)", d.id, got, sent[j], want)
				}
			}
			if victim == "worker" && restarts > devices {
				t.Errorf("%d series restarts for %d devices", restarts, devices)
			}
			t.Logf("killed %s: %d requests acknowledged and answered (%d accepted, %d refused 429), %d identical duplicate replies, %d moves to the other edge, %d series restarts; longest wait for a result (200) after the kill %v",
				victim, len(acked), accepted, refused, twice, moves, restarts, gap.Round(time.Millisecond))
		})
	}
}

// bucketAdmits is how many requests sent at times ats a token bucket of
// rate and burst admits, full at the start.
func bucketAdmits(ats []time.Time, rate float64, burst int) int {
	tokens, n := float64(burst), 0
	for i, at := range ats {
		if i > 0 {
			tokens = min(float64(burst), tokens+rate*at.Sub(ats[i-1]).Seconds())
		}
		if tokens >= 1 {
			tokens--
			n++
		}
	}
	return n
}

// TestClusterScript: scripts/cluster.sh (make cluster) starts three NATS
// servers, two edges and three workers, says where they are and "ready",
// serves, and stops every process on SIGINT.
func TestClusterScript(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole cluster")
	}
	bin := binary(t)
	base := freePortRange(t, 43)
	p := start(t, []string{fmt.Sprintf("CLUSTER_PORT_BASE=%d", base)}, "../scripts/cluster.sh", bin)
	roles := map[string][]string{}
	var pids []int
	timeout := time.After(2 * time.Minute)
	for ready := false; !ready; {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatal("cluster.sh ended before it was ready")
			}
			f := strings.Fields(l)
			switch {
			case l == "ready":
				ready = true
			case len(f) == 4 && strings.HasPrefix(f[2], "pid="):
				roles[f[0]] = append(roles[f[0]], f[3])
				var pid int
				fmt.Sscanf(f[2], "pid=%d", &pid)
				pids = append(pids, pid)
			}
		case <-timeout:
			t.Fatal("cluster.sh not ready within 2 minutes")
		}
	}
	if len(roles["nats"]) != 3 || len(roles["edge"]) != 2 || len(roles["worker"]) != 3 {
		t.Fatalf("processes: %v", roles)
	}
	if roles["nats"][0] != fmt.Sprintf("nats://127.0.0.1:%d", base) || roles["edge"][0] != fmt.Sprintf("mqtt://127.0.0.1:%d", base+20) {
		t.Errorf("urls: %v", roles)
	}
	// A device on the second edge is answered.
	d := dialDevice(t, strings.TrimPrefix(roles["edge"][1], "mqtt://"), "script-1", mqttclient.V311)
	d.ask(t, "anomaly", sample("1", 20))
	if r := d.result(t); r.Status != 200 {
		t.Fatalf("%+v", r)
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatal("cluster.sh did not stop within a minute of SIGINT")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still running after cluster.sh stopped", pid)
		}
	}
}

// freePortRange finds n consecutive free ports on 127.0.0.1 and returns
// the first.
func freePortRange(t *testing.T, n int) int {
	t.Helper()
	for range 50 {
		base := 20000 + rand.IntN(40000)
		free := true
		for i := range n {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}
