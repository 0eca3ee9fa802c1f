package tests

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/chromedp/chromedp"

	"github.com/mqttinfer/mqttinfer/config"
	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
	"github.com/mqttinfer/mqttinfer/topics"
)

// chromiumPath is Debian's chromium (scripts/testdeps.sh installs it).
const chromiumPath = "/usr/bin/chromium"

// pageWait bounds how long the page may take to show something: the fleet
// view is sent every second, so a few seconds is plenty.
const pageWait = 10 * time.Second

// browser starts a headless chromium for the test and returns its tab.
func browser(t *testing.T) context.Context {
	t.Helper()
	requireTool(t, chromiumPath, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// waitPage waits until the JavaScript expression is true on the page.
func waitPage(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(pageWait))); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("the page does not show %s within %s: %v\npage text:\n%s", what, pageWait, err, body)
	}
}

// simulate runs devicesim devices (the `mqttinfer sim` core) against addr
// until the test ends.
func simulate(t *testing.T, o devicesim.Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = devicesim.Run(ctx, o)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(2 * wait):
			t.Error("the simulated devices did not stop")
		}
	})
}

// TestDashboard: while a simulated device sends telemetry, the page at /
// lists that device with its latest result and throttle state, and draws
// each model's latest result (detect: a real photo with its boxes).
func TestDashboard(t *testing.T) {
	ctx := browser(t)
	cfg := testConfig(t)
	withModels(&cfg)
	svc := startService(t, cfg)
	simulate(t, devicesim.Options{Broker: "tcp://" + svc.MQTTAddr(), IDPrefix: "dash-", Devices: 1, Model: "anomaly",
		Rate: 20, QoS: 1, Duration: time.Hour, Seed: 1})

	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+svc.HTTPAddr()+"/")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, ctx, "the simulated device with its latest result",
		`(() => { const r = document.querySelector('#devices tr[data-device="dash-0001"]');
		          return !!r && r.innerText.includes('connected') && /\b200\b/.test(r.innerText) && r.innerText.includes('anomaly'); })()`)
	waitPage(t, ctx, "the anomaly model's latest result",
		`(() => { const p = document.querySelector('section[data-model="anomaly"]');
		          return !!p && p.querySelector('.meta').innerText.includes('dash-0001') && p.querySelector('.summary').innerText.includes('score') && !!p.querySelector('canvas'); })()`)
	waitPage(t, ctx, "the anomaly model's rate", `[...document.querySelectorAll('#models tbody tr')].some(r => r.cells[0].innerText === 'anomaly' && parseFloat(r.cells[1].innerText) > 0)`)
	waitPage(t, ctx, "the node's workers", `document.querySelector('#workers tbody').innerText.includes('in_process')`)
	waitPage(t, ctx, "the device's tokens", `document.querySelector('#devices tr[data-device="dash-0001"] .bar') !== null`)

	// A camera frame: the detections are listed and drawn on the frame.
	const photo = "/usr/share/darknet/data/dog.jpg"
	requireTool(t, photo, "darknet")
	requireModel(t, svc, "detect")
	jpg, err := os.ReadFile(photo)
	if err != nil {
		t.Fatal(err)
	}
	cam := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "cam-dash")
	cam.request("detect", map[string]any{"id": "frame-1", "input": map[string]any{"image": base64.StdEncoding.EncodeToString(jpg)}})
	cam.replyStatus(200)
	waitPage(t, ctx, "the frame with the dog found on it",
		`(() => { const p = document.querySelector('section[data-model="detect"]');
		          if (!p) return false;
		          const c = p.querySelector('canvas');
		          return p.querySelector('.summary').innerText.includes('dog') && !!c && c.width === 768 && c.height === 576; })()`)
}

// TestDashboardAuth: with auth on the page asks for a login and shows no
// data without one, nor with a device's; an observer's shows the fleet.
func TestDashboardAuth(t *testing.T) {
	ctx := browser(t)
	cfg := testConfig(t)
	cfg.Auth.Enabled = true
	cfg.Auth.CredentialsFile = writeCredentials(t, map[string]config.Role{"secret-dev": config.RoleDevice, "ops": config.RoleObserver})
	svc := startService(t, cfg)
	dev := &device{t: t, id: "secret-dev", prefix: cfg.Prefix, msgs: make(chan paho.Message, 16)}
	dev.c = connect(t, svc.MQTTAddr(), "secret-dev", func(o *paho.ClientOptions) { o.SetUsername("secret-dev").SetPassword("secret-dev-pw") })
	dev.subscribe(topics.ResultFilter(cfg.Prefix, "", "secret-dev", ""))
	for i := range 3 {
		dev.request("anomaly", sample("s"+strconv.Itoa(i), float64(i)))
		dev.replyStatus(200)
	}
	waitFor(t, func() bool { return svc.Fleet().Len() == 1 })

	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+svc.HTTPAddr()+"/")); err != nil {
		t.Fatal(err)
	}
	loginShown := `!document.querySelector('#login').hidden && document.querySelector('#app').hidden && !document.body.innerText.includes('secret-dev')`
	waitPage(t, ctx, "a login and no data", loginShown)

	login := func(user, password string) {
		t.Helper()
		err := chromedp.Do(ctx,
			chromedp.SetValue(chromedp.CSS("#username"), user),
			chromedp.SetValue(chromedp.CSS("#password"), password),
			chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
		if err != nil {
			t.Fatal(err)
		}
	}
	login("ops", "wrong")
	waitPage(t, ctx, "a refused login", loginShown+` && document.querySelector('#login-error').innerText.includes('Wrong')`)
	login("secret-dev", "secret-dev-pw")
	waitPage(t, ctx, "a device refused", loginShown+` && document.querySelector('#login-error').innerText.includes('observer')`)
	login("ops", "ops-pw")
	waitPage(t, ctx, "the fleet to an observer", fmt.Sprintf(`document.querySelector('#app').hidden === false && !!document.querySelector('#devices tr[data-device=%q]')`, "secret-dev"))
}
