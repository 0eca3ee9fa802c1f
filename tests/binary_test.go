package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the real mqttinfer binary once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mqttinfer-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "mqttinfer")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/mqttinfer").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a process of the test, stopped with SIGTERM (graceful) at cleanup.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
}

// start runs name with args and env; its stderr and stdout lines are logged
// and can be waited for.
func start(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	p := &proc{cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			t.Log(filepath.Base(name) + ": " + sc.Text())
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() { _ = cmd.Wait(); r.Close(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

// stop ends the process gracefully (SIGTERM) and waits for it.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(wait):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitLine waits for an output line containing s.
func (p *proc) waitLine(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("process ended before printing %q", s)
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			t.Fatalf("no line with %q within %s", s, wait)
		}
	}
}

// startMosquitto starts Debian's mosquitto on a free port: the stand-in for
// HiveMQ or EMQX, a broker that is not ours. It returns its host:port.
func startMosquitto(t *testing.T) string {
	return testenv.StartMosquitto(t, testenv.MosquittoOptions{}).Addr
}

// TestRemoteWorkerOnEmbeddedBroker: `serve --in-process=false` checks and
// throttles, a separate `mqttinfer worker` process answers.
func TestRemoteWorkerOnEmbeddedBroker(t *testing.T) {
	bin := binary(t)
	cfg := testConfig(t)
	cfg.Worker.InProcess = false
	smallBucket(&cfg, 0.5, 2)
	svc := startService(t, cfg)

	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "remote-dev")
	// Before any worker subscribes, a request is answered 503: nobody
	// serves it, and the node says it is not ready.
	d.request("anomaly", sample("early", 1))
	if r := d.replyStatus(503); r.Error.Type != api.ModelUnavailable {
		t.Errorf("no worker: %+v", r.Error)
	}
	if body := httpGet(t, "http://"+svc.HTTPAddr()+"/readyz", 503); !strings.Contains(body, "no remote worker") {
		t.Errorf("readyz without a worker: %s", body)
	}

	waddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w := start(t, nil, bin, "worker", "--broker", "tcp://"+svc.MQTTAddr(), "--node", "w1", "--log-level", "info", "--http-addr", waddr)
	w.waitLine(t, "taking requests")
	waitFor(t, func() bool { return svc.HasSubscribers(topics.Request(cfg.Prefix, "v1", "x", "anomaly")) })
	httpGet(t, "http://"+svc.HTTPAddr()+"/readyz", 200)
	httpGet(t, "http://"+waddr+"/readyz", 200)

	// The first token went to the 503 (it was refunded), so the bucket is full again.
	d.request("anomaly", sample("via-worker", 21))
	if r := d.replyStatus(200); r.ID != "via-worker" || r.Model != "anomaly" {
		t.Errorf("result %+v", r)
	}
	d.request("anomaly", sample("second", 21))
	d.replyStatus(200)
	// The broker throttles before the worker sees anything.
	d.request("anomaly", sample("third", 21))
	if r := d.replyStatus(429); r.Error.RetryAfterMS <= 0 {
		t.Errorf("429 without retry_after_ms: %+v", r.Error)
	}
	// A spoofed id is refused by the broker, never reaching the worker.
	d.publish(topics.Request(cfg.Prefix, "v1", "someone-else", "anomaly"), mustJSON(t, sample("spoof", 1)))
	d.replyStatus(403)

	// The node counts what the worker answered; the worker has its own
	// metrics; neither claims a transport that is off.
	if n := metricValue(t, svc.HTTPAddr(), `mqttinfer_remote_requests_total{model="anomaly",status="200",version="v1"}`); n != 2 {
		t.Errorf("node: remote requests answered 200: %v, want 2", n)
	}
	if n := metricValue(t, svc.HTTPAddr(), `mqttinfer_worker_up{transport="in_process"}`); n != 0 {
		t.Errorf("node: in_process worker up %v with in-process workers off", n)
	}
	if n := metricValue(t, waddr, `mqttinfer_requests_total{model="anomaly",status="200",version="v1"}`); n != 2 {
		t.Errorf("worker: requests answered 200: %v, want 2", n)
	}
	if n := metricValue(t, waddr, `mqttinfer_worker_partitions`); n != worker.Partitions {
		t.Errorf("worker: partitions %v, want all %d", n, worker.Partitions)
	}
}

// TestTwoDemosOnOneBroker: two people run the public-broker demo at once
// on one broker, each with a prefix of their own and every id left to its
// default: both complete, nothing lost.
func TestTwoDemosOnOneBroker(t *testing.T) {
	bin := binary(t)
	addr := startMosquitto(t)
	var wg sync.WaitGroup
	for _, prefix := range []string{"demo-a1b2c3", "demo-d4e5f6"} {
		w := start(t, nil, bin, "worker", "--broker", "tcp://"+addr, "--prefix", prefix, "--throttle", "--log-level", "info")
		w.waitLine(t, "taking requests")
		wg.Go(func() {
			out, err := exec.Command(bin, "sim", "--broker", "tcp://"+addr, "--prefix", prefix, "--devices", "3", "--rate", "5",
				"--duration", "3s", "--json").Output()
			if err != nil {
				t.Errorf("%s: sim: %v: %s", prefix, err, out)
				return
			}
			var rep struct{ Sent, OK, Lost, Throttled int }
			if err := json.Unmarshal(out, &rep); err != nil {
				t.Errorf("%s: report %s: %v", prefix, out, err)
				return
			}
			t.Logf("%s: %+v", prefix, rep)
			if rep.Sent == 0 || rep.Lost != 0 || rep.OK+rep.Throttled != rep.Sent {
				t.Errorf("%s: %+v", prefix, rep)
			}
		})
	}
	wg.Wait()
}

// TestRemoteWorkerOnMosquitto: a worker on a broker that is not ours
// throttles each device itself.
func TestRemoteWorkerOnMosquitto(t *testing.T) {
	bin := binary(t)
	addr := startMosquitto(t)
	w := start(t, []string{"MQTTINFER_THROTTLE_RATE=0.5", "MQTTINFER_THROTTLE_BURST=2", unitCostsEnv()},
		bin, "worker", "--broker", "tcp://"+addr, "--node", "w-mosq", "--worker-throttle", "--log-level", "info")
	w.waitLine(t, "taking requests")

	a := newDevice(t, addr, "mqttinfer", "mosq-a")
	b := newDevice(t, addr, "mqttinfer", "mosq-b")
	for i := range 2 {
		a.request("anomaly", sample(fmt.Sprint("a", i), 20))
		if r := a.replyStatus(200); r.RateLimit == nil || r.RateLimit.Remaining != 1-i {
			t.Errorf("ratelimit %+v", r.RateLimit)
		}
	}
	a.request("anomaly", sample("a-over", 20))
	r := a.replyStatus(429)
	if r.Error.RetryAfterMS <= 0 || r.Error.RetryAfterMS > 2000 || r.ID != "a-over" {
		t.Errorf("429 %+v", r.Error)
	}
	b.request("anomaly", sample("b0", 20))
	b.replyStatus(200)
	// Bad input is answered by the worker too.
	a.publish(topics.Request("mqttinfer", "v1", "mosq-a", "anomaly"), []byte(`{"id":"bad",`))
	if r := a.replyStatus(400); r.ID != "bad" {
		t.Errorf("400 %+v", r)
	}

	// The worker's catalog is retained on Mosquitto, so `mqttinfer models` reads it.
	out, err := exec.CommandContext(context.Background(), bin, "models", "--broker", "tcp://"+addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "anomaly") {
		t.Errorf("mqttinfer models: %v: %s", err, out)
	}
}

// TestOneConsumerPerRequest: with the in-process pool on, a remote worker
// subscribed to the same requests never sees them: each request is
// answered exactly once, by the pool.
func TestOneConsumerPerRequest(t *testing.T) {
	bin := binary(t)
	cfg := testConfig(t)
	svc := startService(t, cfg)
	w := start(t, nil, bin, "worker", "--broker", "tcp://"+svc.MQTTAddr(), "--node", "w-extra", "--log-level", "debug")
	w.waitLine(t, "taking requests")
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "once-dev")
	for i := range 5 {
		d.request("anomaly", sample(fmt.Sprint("once-", i), 20))
		d.replyStatus(200)
	}
	// A remote worker answers everything it took before it exits; once it
	// has, and a last request has made the round trip, nothing more may come.
	w.stop()
	d.request("anomaly", sample("marker", 20))
	if r := d.replyStatus(200); r.ID != "marker" {
		t.Fatalf("got %q before the marker: a request was answered twice", r.ID)
	}
	select {
	case m := <-d.msgs:
		t.Fatalf("extra reply %s", m.Payload())
	default:
	}
}
