package tests

import (
	"context"
	"testing"
	"time"

	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
)

// TestWorkerQueueDropsNothing: our broker with one remote worker, and more
// devices, each with a request always outstanding, than a device's
// outbound queue holds (mqtt.max_client_writes_pending, 256 by default):
// every request the broker took reaches the worker (its connection has a
// deeper queue) and is answered; none is dropped on the way.
func TestWorkerQueueDropsNothing(t *testing.T) {
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	bcfg := cfg
	bcfg.Worker.InProcess = false
	svc := startService(t, bcfg)
	wcfg := cfg
	wcfg.Remote.Broker = "tcp://" + svc.MQTTAddr()
	wcfg.Remote.Throttle = false
	startWorkers(t, wcfg, 1)
	waitFor(t, func() bool { return httpStatus(t, "http://"+svc.HTTPAddr()+"/readyz") == 200 })

	rep, err := devicesim.Run(context.Background(), devicesim.Options{
		Broker: "tcp://" + svc.MQTTAddr(), Devices: 600, ClosedLoop: true, Lean: true, QoS: 1,
		Duration: 2 * time.Second, Drain: wait, ConnectConcurrency: 128,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", rep)
	dropped := metricValue(t, svc.HTTPAddr(), "mqttinfer_replies_dropped_total")
	if rep.Lost != 0 || dropped != 0 || rep.OK+rep.Errors["overloaded"] != rep.Sent || rep.Sent < 600 {
		t.Errorf("sent %d, ok %d, errors %v, lost %d; the broker dropped %v", rep.Sent, rep.OK, rep.Errors, rep.Lost, dropped)
	}
}
