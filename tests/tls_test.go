package tests

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/topics"
)

// tlsConfigOf sets up a node with TLS on every door: MQTT over TLS,
// WebSocket over TLS and HTTPS, with client certificates of ca required.
func tlsConfigOf(t *testing.T, ca *testenv.CA, dir string) (certFile, keyFile string) {
	t.Helper()
	return ca.ServerFiles(t, dir, "127.0.0.1", "localhost")
}

// TestTLSEveryDoor: MQTT over TLS and over WebSocket over TLS with a client
// certificate whose common name is the device's id, HTTPS, and no
// connection without a certificate of the configured CA.
func TestTLSEveryDoor(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	cfg := testConfig(t)
	cfg.TLS.CertFile, cfg.TLS.KeyFile = tlsConfigOf(t, ca, dir)
	cfg.TLS.ClientCAFile = ca.CertFile(t, dir)
	cfg.MQTT.TLSAddr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	svc := startService(t, cfg)

	for _, url := range []string{"ssl://" + svc.MQTTTLSAddr(), "wss://" + cfg.MQTT.WSAddr} {
		t.Run(url[:3], func(t *testing.T) {
			// The client id is not the device id: the certificate says who it is.
			d := dialTLSDevice(t, url, "cam-7", "client-"+url[:3], ca.ClientTLS(t, "cam-7"))
			d.ask(t, "anomaly", sample("over-tls", 20))
			if r := d.result(t); r.Status != 200 || r.ID != "over-tls" {
				t.Fatalf("%+v", r)
			}
			// The certificate says who the device is: another id is refused.
			d.pub(t, topics.Request("mqttinfer", "v1", "cam-8", "anomaly"), sample("spoof", 20))
			if r := d.result(t); r.Status != 403 {
				t.Fatalf("spoof over TLS: %+v", r)
			}
		})
	}
	// No client certificate, or one of another CA: no connection.
	for name, tc := range map[string]*tls.Config{"no certificate": ca.ClientTLS(t, ""), "another CA": withRoots(testenv.NewCA(t).ClientTLS(t, "cam-7"), ca)} {
		if c, err := mqttclient.Dial(context.Background(), mqttclient.Options{URL: "ssl://" + svc.MQTTTLSAddr(), ClientID: "x", TLS: tc}); err == nil {
			c.Close()
			t.Errorf("%s: connected", name)
		}
	}
	// HTTPS on the HTTP port.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientTLS(t, "")}, Timeout: wait}
	resp, err := hc.Get("https://" + svc.HTTPAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("https: %d %v", resp.StatusCode, resp.TLS)
	}
}

// withRoots makes c trust ca's server certificates (but keeps its own
// client certificate).
func withRoots(c *tls.Config, ca *testenv.CA) *tls.Config {
	c.RootCAs = ca.Pool()
	return c
}

// TestTLSReload: a renewed server certificate is served to new
// connections without a restart.
func TestTLSReload(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	cfg := testConfig(t)
	cfg.TLS.CertFile, cfg.TLS.KeyFile = tlsConfigOf(t, ca, dir)
	cfg.MQTT.TLSAddr = "127.0.0.1:0"
	svc := startService(t, cfg)
	dial := func(c *tls.Config) error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", svc.MQTTTLSAddr(), c)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dial(ca.ClientTLS(t, "")); err != nil {
		t.Fatal(err)
	}
	// Renew: a certificate from another CA replaces the files, the way a
	// certificate manager renames new files into place.
	next := testenv.NewCA(t)
	ndir := t.TempDir()
	cert, key := next.ServerFiles(t, ndir, "127.0.0.1")
	for _, f := range [][2]string{{cert, cfg.TLS.CertFile}, {key, cfg.TLS.KeyFile}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f[1]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(wait)
	for dial(next.ClientTLS(t, "")) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate is not served")
		}
		time.Sleep(100 * time.Millisecond) // the node checks its files every 2 s
	}
	if err := dial(ca.ClientTLS(t, "")); err == nil {
		t.Error("the old certificate is still served")
	}
}

func dialTLSDevice(t *testing.T, url, id, clientID string, tc *tls.Config) *cdev {
	t.Helper()
	d := &cdev{id: id, msgs: make(chan mqttclient.Message, 64)}
	c, err := mqttclient.Dial(context.Background(), mqttclient.Options{URL: url, ClientID: clientID, TLS: tc,
		OnMessage: func(m mqttclient.Message) { d.msgs <- m }})
	if err != nil {
		t.Fatal(err)
	}
	d.Conn = c
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Subscribe(ctx, mqttclient.Subscription{Filter: topics.ResultFilter("mqttinfer", "", id, ""), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	return d
}
