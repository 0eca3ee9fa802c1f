package devicesim

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/topics"
)

func TestBrokerURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                      DefaultBroker,
		"127.0.0.1:1884":        "tcp://127.0.0.1:1884",
		"ssl://b.test:8883":     "ssl://b.test:8883",
		"unix:///run/mqtt.sock": "unix:///run/mqtt.sock",
		"wss://b.test/mqtt":     "wss://b.test/mqtt",
	} {
		if got := brokerURL(in); got != want {
			t.Errorf("brokerURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRunOverUnixSocket runs devices against a broker on a unix socket.
func TestRunOverUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mqtt.sock")
	b := startBrokerOn(t, "unix", listeners.NewUnixSock(listeners.Config{ID: "unix", Address: sock}))
	if b.addr != "unix://"+sock {
		t.Fatalf("broker address %q", b.addr)
	}
	startResponder(t, b, "mqttinfer", "", 0)
	rep, err := Run(t.Context(), Options{Broker: b.addr, Devices: 2, Rate: 50, Requests: 3, Drain: time.Second})
	if err != nil {
		t.Fatalf("Run over %s: %v", b.addr, err)
	}
	if rep.Connected != 2 || rep.OK != 6 {
		t.Errorf("report over a unix socket: %+v", rep)
	}
}

// TestDialTLS connects to a broker that a test CA signed for and that asks
// for a client certificate from the same CA.
func TestDialTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	cert, key := ca.ServerFiles(t, t.TempDir(), "127.0.0.1")
	server, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	b := startBrokerOn(t, "ssl", listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}}))
	good := ca.ClientTLS(t, "sim")

	t.Run("models over TLS", func(t *testing.T) {
		if err := b.srv.Publish(topics.Models("mqttinfer", "v1"), []byte(testCatalog), true, 0); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		if err := Models(t.Context(), ModelsOptions{Broker: b.addr, TLSConfig: good, Timeout: 5 * time.Second}, &out); err != nil {
			t.Fatalf("Models over %s: %v", b.addr, err)
		}
		if !strings.Contains(out.String(), "anomaly") {
			t.Errorf("catalog over TLS:\n%s", out.String())
		}
	})
	for _, tt := range []struct {
		name string
		tls  *tls.Config
		want string
	}{
		{"system roots", nil, "certificate"},
		{"no client certificate", ca.ClientTLS(t, ""), "certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := dial(t.Context(), conn{broker: b.addr, clientID: "refused", tls: tt.tls, timeout: 5 * time.Second})
			if err == nil {
				cl.Disconnect(0)
				t.Fatal("connected, want a TLS error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}
