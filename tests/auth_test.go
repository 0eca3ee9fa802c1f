package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/topics"
)

func TestAuthRoles(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "creds.yaml")
	err := os.WriteFile(creds, []byte(`insecure_plaintext: true
users:
  - {username: thermo-1, password: pw-thermo, role: device}
  - {username: thermo-2, password: pw-thermo2, role: device}
  - {username: ops, password: pw-ops, role: observer}
  - {username: w1, password: pw-w1, role: worker}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Auth.Enabled = true
	cfg.Auth.CredentialsFile = creds
	svc := startService(t, cfg)
	addr := svc.MQTTAddr()
	login := func(user, pass string) func(*paho.ClientOptions) {
		return func(o *paho.ClientOptions) { o.SetUsername(user).SetPassword(pass) }
	}

	// A wrong password or an unknown user is refused at CONNECT.
	for _, c := range [][2]string{{"thermo-1", "wrong"}, {"nobody", "x"}} {
		cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("x-" + c[0]).
			SetUsername(c[0]).SetPassword(c[1]).SetAutoReconnect(false).SetConnectTimeout(wait))
		if tok := cl.Connect(); tok.WaitTimeout(wait) && tok.Error() == nil {
			cl.Disconnect(0)
			t.Errorf("%s/%s connected", c[0], c[1])
		}
	}

	// A device is identified by its username, whatever its client id.
	dev := &device{t: t, id: "thermo-1", prefix: cfg.Prefix, msgs: make(chan paho.Message, 16)}
	dev.c = connect(t, addr, "some-client-id", login("thermo-1", "pw-thermo"))
	dev.subscribe(topics.ResultFilter(cfg.Prefix, "", "thermo-1", ""))
	dev.request("anomaly", sample("a1", 20))
	dev.replyStatus(200)

	// It may not read another device's results, nor requests.
	for _, f := range []string{
		topics.ResultFilter(cfg.Prefix, "v1", "thermo-2", ""),
		topics.ResultFilter(cfg.Prefix, "", "", ""),
		topics.RequestFilter(cfg.Prefix),
		cfg.Prefix + "/#",
	} {
		if granted(t, dev.c, f) {
			t.Errorf("device was granted %s", f)
		}
	}
	// But the catalog and status, yes.
	for _, f := range []string{topics.Models(cfg.Prefix, "v1"), topics.StatusFilter(cfg.Prefix)} {
		if !granted(t, dev.c, f) {
			t.Errorf("device was refused %s", f)
		}
	}

	// An observer reads every device's results.
	obs := &device{t: t, id: "ops", prefix: cfg.Prefix, msgs: make(chan paho.Message, 16)}
	obs.c = connect(t, addr, "ops-console", login("ops", "pw-ops"))
	if !granted(t, obs.c, topics.ResultFilter(cfg.Prefix, "", "", "")) {
		t.Fatal("observer refused all results")
	}
	obs.subscribe(topics.ResultFilter(cfg.Prefix, "", "", ""))
	if granted(t, obs.c, topics.RequestFilter(cfg.Prefix)) {
		t.Error("observer granted requests")
	}
	dev.request("anomaly", sample("a2", 20))
	dev.replyStatus(200)
	if _, r := obs.reply(); r.ID != "a2" {
		t.Errorf("observer saw %+v", r)
	}

	// A worker may take the shared request subscription.
	w := connect(t, addr, "w1-client", login("w1", "pw-w1"))
	if !granted(t, w, topics.SharedRequestFilter("g", cfg.Prefix)) {
		t.Error("worker refused the shared request subscription")
	}
	// Outside the prefix the broker is open to every authenticated client.
	if !granted(t, dev.c, "factory/line1/#") {
		t.Error("device refused a topic outside the prefix")
	}
}

// granted subscribes to filter and reports whether the broker granted it.
func granted(t *testing.T, c paho.Client, filter string) bool {
	t.Helper()
	tok := c.Subscribe(filter, 1, func(paho.Client, paho.Message) {})
	if !tok.WaitTimeout(wait) {
		t.Fatalf("no SUBACK for %s", filter)
	}
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		t.Fatal("not a subscribe token")
	}
	code := st.Result()[filter]
	if code < 0x80 {
		c.Unsubscribe(filter).WaitTimeout(wait)
		return true
	}
	return false
}

// TestAuthRemoteWorkers: with auth on and in-process workers off, remote
// workers log in with the worker role and serve the devices: the group
// protocol (statuses, sent records, results) passes the ACL.
func TestAuthRemoteWorkers(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "creds.yaml")
	err := os.WriteFile(creds, []byte(`insecure_plaintext: true
users:
  - {username: mic-1, password: pw-mic, role: device}
  - {username: w1, password: pw-w1, role: worker}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Auth.Enabled = true
	cfg.Auth.CredentialsFile = creds
	cfg.Worker.InProcess = false
	cfg.Throttle.Enabled = false
	svc := startService(t, cfg)
	wcfg := cfg
	wcfg.Remote.Broker = "tcp://" + svc.MQTTAddr()
	wcfg.Remote.Username, wcfg.Remote.Password = "w1", "pw-w1"
	startWorkers(t, wcfg, 2)
	dev := &device{t: t, id: "mic-1", prefix: cfg.Prefix, msgs: make(chan paho.Message, 16)}
	dev.c = connect(t, svc.MQTTAddr(), "mic-client", func(o *paho.ClientOptions) { o.SetUsername("mic-1").SetPassword("pw-mic") })
	dev.subscribe(topics.ResultFilter(cfg.Prefix, "", "mic-1", ""))
	for i := range 5 {
		dev.request("anomaly", sample(fmt.Sprint(i), 20))
	}
	for range 5 {
		dev.replyStatus(200)
	}
}
