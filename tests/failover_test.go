package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

// TestKillWorkerUnderLoad: three `mqttinfer worker` processes on Mosquitto
// share 20 devices sending 20 requests per second each (QoS 1) for 15 s;
// one worker is killed with SIGKILL a third of the way in. Every request is
// answered, and none is answered twice with different results. The log
// gives how long the killed worker's devices went unanswered.
func TestKillWorkerUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("15 s of load")
	}
	bin := binary(t)
	m := testenv.StartMosquitto(t, testenv.MosquittoOptions{Config: "max_queued_messages 100000\n"})
	obs := dialDevice(t, m.Addr, "failover-observer", mqttclient.V5, topics.NodeStatusFilter("mqttinfer", topics.Latest()))
	var procs []*proc
	var ready []string
	for i := range 3 {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		ready = append(ready, "http://"+addr+"/readyz")
		procs = append(procs, start(t, []string{"MQTTINFER_THROTTLE_ENABLED=false"}, bin, "worker", "--broker", m.URL(),
			"--node", fmt.Sprintf("fw%d", i+1), "--http-addr", addr, "--log-level", "warn"))
	}
	waitFor(t, func() bool {
		for _, u := range ready {
			if httpStatus(t, u) != 200 {
				return false
			}
		}
		return true
	})

	const devices, rate, duration = 20, 20, 15 * time.Second
	type reply struct {
		at     time.Time
		status int
		output string
	}
	var mu sync.Mutex
	replies := map[string][]reply{} // by device/id
	sent := map[string]time.Time{}
	var devs []*cdev
	for i := range devices {
		d := &cdev{id: fmt.Sprintf("load-%02d", i), msgs: make(chan mqttclient.Message, 1)}
		c, err := mqttclient.Dial(context.Background(), mqttclient.Options{URL: m.URL(), ClientID: d.id, Version: mqttclient.V311,
			OnMessage: func(msg mqttclient.Message) {
				var r api.Result
				if err := json.Unmarshal(msg.Payload, &r); err != nil {
					t.Errorf("%s: %s", msg.Topic, msg.Payload)
					return
				}
				mu.Lock()
				k := d.id + "/" + r.ID
				replies[k] = append(replies[k], reply{time.Now(), r.Status, string(r.Output)})
				mu.Unlock()
			}})
		if err != nil {
			t.Fatal(err)
		}
		d.Conn = c
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		if err := c.Subscribe(ctx, mqttclient.Subscription{Filter: topics.ResultFilter("mqttinfer", "", d.id, ""), QoS: 1}); err != nil {
			t.Fatal(err)
		}
		cancel()
		devs = append(devs, d)
	}

	// Which devices the victim serves: its latest status before the kill.
	victim := "fw2"
	statuses := make(chan worker.Status, 64)
	stop := make(chan struct{})
	var watching sync.WaitGroup
	watching.Go(func() {
		for {
			select {
			case <-stop:
				return
			case msg := <-obs.msgs:
				var st worker.Status
				if json.Unmarshal(msg.Payload, &st) == nil && st.Node == victim && st.Partitions != nil {
					select {
					case statuses <- st:
					case <-stop:
						return
					}
				}
			}
		}
	})
	defer func() { close(stop); watching.Wait() }()

	var wg sync.WaitGroup
	begin := time.Now()
	var killedAt time.Time
	for _, d := range devs {
		wg.Go(func() {
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			for i := 0; time.Since(begin) < duration; i++ {
				<-tick.C
				id := fmt.Sprint(i)
				mu.Lock()
				sent[d.id+"/"+id] = time.Now()
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				err := d.Publish(ctx, mqttclient.Message{Topic: topics.Request("mqttinfer", "v1", d.id, "anomaly"), QoS: 1,
					Payload: mustJSON(t, sample(id, 20+float64(i%7)/10))})
				cancel()
				if err != nil {
					t.Errorf("%s: %v", d.id, err)
					return
				}
			}
		})
	}
	time.Sleep(duration / 3) // the load runs meanwhile; this is when the kill happens, not a wait for it
	var last worker.Status
	for drained := false; !drained; {
		select {
		case last = <-statuses:
		default:
			drained = true
		}
	}
	killedAt = time.Now()
	if err := procs[1].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	var affected []string
	for _, d := range devs {
		if last.Partitions != nil && slices.Contains(last.Partitions.Claimed, worker.Partition(d.id)) {
			affected = append(affected, d.id)
		}
	}
	t.Logf("%s served %d partitions, %d of the %d devices", victim, last.Partitions.Serving, len(affected), devices)

	// Every request sent is answered, once or with identical answers.
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for k := range sent {
			if len(replies[k]) == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	twice := 0
	for k, rs := range replies {
		if _, ok := sent[k]; !ok {
			t.Errorf("reply to a request never sent: %s", k)
		}
		for _, r := range rs[1:] {
			twice++
			if r.status != rs[0].status || r.output != rs[0].output {
				t.Errorf("%s answered twice, differently: %d %s / %d %s", k, rs[0].status, rs[0].output, r.status, r.output)
			}
		}
		if rs[0].status != 200 {
			t.Errorf("%s: status %d", k, rs[0].status)
		}
	}
	// How long the victim's devices waited: the longest gap between two
	// replies of one of them, around the kill.
	var gaps []time.Duration
	firstAfter := time.Duration(0)
	for _, dev := range affected {
		var ats []time.Time
		for k, rs := range replies {
			if len(k) > len(dev) && k[:len(dev)+1] == dev+"/" {
				ats = append(ats, rs[0].at)
			}
		}
		slices.SortFunc(ats, func(a, b time.Time) int { return a.Compare(b) })
		var gap time.Duration
		for i := 1; i < len(ats); i++ {
			if ats[i].After(killedAt) && ats[i-1].Before(killedAt.Add(time.Second)) {
				gap = max(gap, ats[i].Sub(ats[i-1]))
			}
		}
		gaps = append(gaps, gap)
		for _, at := range ats {
			if at.After(killedAt) {
				firstAfter = max(firstAfter, at.Sub(killedAt))
				break
			}
		}
	}
	if len(gaps) == 0 {
		t.Fatal("the killed worker served none of the devices")
	}
	slices.Sort(gaps)
	t.Logf("%d requests answered, %d duplicate replies (identical); the killed worker's %d devices: longest reply gap %v (median %v), first reply after the kill within %v",
		len(sent), twice, len(affected), gaps[len(gaps)-1].Round(time.Millisecond), gaps[len(gaps)/2].Round(time.Millisecond), firstAfter.Round(time.Millisecond))
}
