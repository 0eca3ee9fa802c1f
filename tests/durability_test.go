package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/service"
	"github.com/mqttinfer/mqttinfer/topics"
)

// persistent connects a client with a persistent session (clean session
// off) that reconnects by itself and resends what the broker did not
// acknowledge, as a device that must not lose anything does.
func persistent(t *testing.T, addr, id string, onMsg paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectTimeout(wait).SetResumeSubs(true).SetOrderMatters(false).
		SetDefaultPublishHandler(onMsg)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// TestQueuedResultSurvivesRestart: a result queued for an offline device
// with a persistent session is delivered after the node restarts.
func TestQueuedResultSurvivesRestart(t *testing.T) {
	cfg := testConfig(t)
	cfg.Storage.Dir = t.TempDir()
	cfg.MQTT.TCPAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	svc := startService(t, cfg)
	got := make(chan paho.Message, 4)
	dev := persistent(t, cfg.MQTT.TCPAddr, "sleepy-1", func(_ paho.Client, m paho.Message) { got <- m })
	if tok := dev.Subscribe(topics.ResultFilter(cfg.Prefix, "", "sleepy-1", ""), 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dev.Disconnect(100) // asleep; its session stays
	other := connect(t, svc.MQTTAddr(), "late-publisher")
	if tok := other.Publish(topics.Result(cfg.Prefix, "v1", "sleepy-1", "anomaly"), 1, false, `{"id":"while-asleep","status":200}`); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	restart(t, svc)
	startService(t, cfg)
	persistent(t, cfg.MQTT.TCPAddr, "sleepy-1", func(_ paho.Client, m paho.Message) { got <- m })
	select {
	case m := <-got:
		if string(m.Payload()) != `{"id":"while-asleep","status":200}` {
			t.Fatalf("got %s", m.Payload())
		}
	case <-time.After(wait):
		t.Fatal("the queued result was lost in the restart")
	}
}

// restart stops a service gracefully before its test ends.
func restart(t *testing.T, svc *service.Service) {
	t.Helper()
	if err := svc.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestKillServeUnderLoad: `mqttinfer serve` with storage is killed (SIGKILL)
// under QoS 1 load and started again on the same storage: every request it
// acknowledged is answered, by the first process or, from its journal, the
// second.
func TestKillServeUnderLoad(t *testing.T) {
	bin := binary(t)
	storage := filepath.Join(t.TempDir(), "store")
	mport, hport := freePort(t), freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", mport)
	env := []string{"MQTTINFER_THROTTLE_ENABLED=false"}
	args := []string{"serve", "--mqtt-addr", addr, "--ws-addr", "", "--http-addr", fmt.Sprintf("127.0.0.1:%d", hport),
		"--storage-dir", storage, "--models-dir", filepath.Join(t.TempDir(), "none"), "--log-level", "warn"}
	first := start(t, env, bin, args...)
	waitFor(t, func() bool { return httpStatus(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", hport)) == 200 })

	const devices, rate, duration = 10, 50, 4 * time.Second
	var mu sync.Mutex
	accepted := map[string]bool{}
	answers := map[string]int{}
	var clients []paho.Client
	for i := range devices {
		id := fmt.Sprintf("dur-%02d", i)
		c := persistent(t, addr, id, func(_ paho.Client, m paho.Message) {
			var r api.Result
			if json.Unmarshal(m.Payload(), &r) != nil || r.Status == 0 {
				return
			}
			mu.Lock()
			answers[id+"/"+r.ID]++
			mu.Unlock()
		})
		if tok := c.Subscribe(topics.ResultFilter("mqttinfer", "", id, ""), 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		clients = append(clients, c)
	}
	var wg sync.WaitGroup
	begin := time.Now()
	for i, c := range clients {
		id := fmt.Sprintf("dur-%02d", i)
		wg.Go(func() {
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			var toks sync.WaitGroup
			for n := 0; time.Since(begin) < duration; n++ {
				<-tick.C
				rid := strconv.Itoa(n)
				tok := c.Publish(topics.Request("mqttinfer", "v1", id, "anomaly"), 1, false, mustJSON(t, sample(rid, 20+float64(n%5))))
				toks.Go(func() {
					// The client resends until acknowledged, across the
					// restart: a completed token means accepted.
					if tok.WaitTimeout(3*wait) && tok.Error() == nil {
						mu.Lock()
						accepted[id+"/"+rid] = true
						mu.Unlock()
					}
				})
			}
			toks.Wait()
		})
	}
	time.Sleep(duration / 2) // load runs; this is when the kill happens
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-first.done
	start(t, env, bin, args...)
	wg.Wait()
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for k := range accepted {
			if answers[k] == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	twice := 0
	for _, n := range answers {
		if n > 1 {
			twice++
		}
	}
	t.Logf("%d requests accepted, all answered; %d answered more than once", len(accepted), twice)
}
