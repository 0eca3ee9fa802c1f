package tests

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/service"
	"github.com/mqttinfer/mqttinfer/topics"
)

// TestDevicesLeaveNothingBehind: 300 devices connect, subscribe, send
// anomaly requests over MQTT (and a few over HTTP), and leave. Everything
// the node holds for them, counted from its own structures (broker
// sessions, subscriptions, session owners (with auth), in-flight messages, throttle
// buckets, pool lanes, anomaly series, goroutines), goes back to where it
// was once they have left and their idle state has expired.
func TestDevicesLeaveNothingBehind(t *testing.T) {
	const devices, requests = 300, 3
	cfg := testConfig(t)
	cfg.Throttle.IdleTTL = time.Second
	cfg.Models.Anomaly.IdleTTL = time.Second
	svc := startService(t, cfg)
	before := svc.Held()

	var wg sync.WaitGroup
	clients := make([]paho.Client, devices)
	errs := make(chan error, devices)
	for i := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("leaver-%03d", i)
			o := paho.NewClientOptions().AddBroker("tcp://" + svc.MQTTAddr()).SetClientID(id).
				SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(wait)
			c := paho.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
				errs <- fmt.Errorf("%s: connect: %v", id, tok.Error())
				return
			}
			clients[i] = c
			got := make(chan struct{}, requests)
			tok := c.Subscribe(topics.ResultFilter("mqttinfer", "", id, ""), 1, func(paho.Client, paho.Message) { got <- struct{}{} })
			if !tok.WaitTimeout(wait) || tok.Error() != nil {
				errs <- fmt.Errorf("%s: subscribe: %v", id, tok.Error())
				return
			}
			for r := range requests {
				body := mustJSON(t, sample(fmt.Sprintf("r%d", r), 20+float64(r)))
				if tok := c.Publish(topics.Request("mqttinfer", "v1", id, "anomaly"), 1, false, body); !tok.WaitTimeout(wait) || tok.Error() != nil {
					errs <- fmt.Errorf("%s: publish: %v", id, tok.Error())
					return
				}
			}
			for range requests {
				select {
				case <-got:
				case <-time.After(wait):
					errs <- fmt.Errorf("%s: a reply is missing", id)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	during := svc.Held()
	t.Logf("before: %+v", before)
	t.Logf("with %d devices connected: %+v", devices, during)
	// The counts see the devices (a check that could not fail is no check).
	if during.Sessions < before.Sessions+devices || during.Subscriptions < before.Subscriptions+devices ||
		during.Buckets < devices || during.ModelState["anomaly"] < devices {
		t.Fatalf("the node does not count its devices: %+v", during)
	}
	// An HTTP client is a device to the throttle and the models too.
	for i := range 3 {
		resp, err := httpClient.Post("http://"+svc.HTTPAddr()+"/v1/models/anomaly/infer", "application/json",
			bytes.NewReader(mustJSON(t, sample(fmt.Sprintf("h%d", i), 20))))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP infer: %d", resp.StatusCode)
		}
	}
	if h := svc.Held(); h.Buckets != during.Buckets+1 || h.ModelState["anomaly"] != during.ModelState["anomaly"]+1 {
		t.Fatalf("the HTTP client is not counted: %+v", h)
	}

	for _, c := range clients {
		c.Disconnect(50)
	}
	var after service.Held
	deadline := time.Now().Add(3 * wait)
	for {
		after = svc.Held()
		if after.Sessions == before.Sessions && after.Subscriptions == before.Subscriptions && after.Owners == before.Owners &&
			after.Inflight == before.Inflight && after.Buckets == before.Buckets && after.Lanes == 0 && after.Running == 0 &&
			after.ModelState["anomaly"] == before.ModelState["anomaly"] && after.Goroutines <= before.Goroutines+5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the devices left, the node still holds\n%+v\nagainst, before they came,\n%+v", after, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("after they left: %+v", after)
}
