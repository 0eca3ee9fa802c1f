package main

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/topics"
)

// isolate clears every MQTTINFER_* variable and moves into an empty
// directory, so that neither the environment nor a stray ./mqttinfer.yaml
// changes what a command loads.
func isolate(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		n, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(n, config.EnvPrefix+"_") {
			t.Setenv(n, "") // restores the old value at cleanup
			if err := os.Unsetenv(n); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Chdir(t.TempDir())
}

// run executes mqttinfer with args and returns its output and error.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := rootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// load parses args with the flags of subcommand name and loads the
// configuration as the command would.
func load(t *testing.T, name string, args ...string) (config.Config, error) {
	t.Helper()
	cmd, _, err := rootCmd().Find([]string{name})
	if err != nil || cmd.Name() != name {
		t.Fatalf("no command %s: %v", name, err)
	}
	if err := cmd.ParseFlags(args); err != nil {
		return config.Config{}, err
	}
	return loadConfig(cmd)
}

func TestFlagsThatDoNothingAreUnknown(t *testing.T) {
	isolate(t)
	for _, args := range [][]string{
		{"worker", "--in-process"},
		{"worker", "--mqtt-addr", ":1"},
		{"worker", "--auth"},
		{"worker", "--pprof"},
		{"worker", "--password", "pw"},
		{"serve", "--broker", "tcp://h:1883"},
		{"serve", "--worker-throttle"},
		{"serve", "--worker-concurrency", "2"},
		{"serve", "--group", "g"},
		{"serve", "--ca-file", "ca.pem"},
		{"sim", "--node", "n"},
		{"sim", "--throttle"},
		{"watch", "--log-level", "debug"},
		{"models", "--client-id", "c"},
		{"chat", "--concurrency", "1", "hello"},
	} {
		_, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), "unknown flag: "+args[1]) {
			t.Errorf("mqttinfer %s: %v, want unknown flag %s", strings.Join(args, " "), err, args[1])
		}
	}
}

func TestFlagsSetTheirCommandsKeys(t *testing.T) {
	tests := []struct {
		cmd  string
		args []string
		want func(c *config.Config) // changes from the defaults
	}{
		{"worker", []string{"--concurrency", "1"}, func(c *config.Config) { c.Remote.Concurrency = 1 }},
		{"worker", []string{"--worker-concurrency=3"}, func(c *config.Config) { c.Remote.Concurrency = 3 }},
		{"worker", []string{"--throttle"}, func(c *config.Config) { c.Remote.Throttle = true }},
		{"worker", []string{"--worker-throttle"}, func(c *config.Config) { c.Remote.Throttle = true }},
		{"worker", []string{"--http-addr", "127.0.0.1:9100"}, func(c *config.Config) { c.Remote.HTTPAddr = "127.0.0.1:9100" }},
		{"worker", []string{"--queue-size", "7", "--throttle-rate", "2"}, func(c *config.Config) { c.Worker.QueueSize, c.Throttle.Rate = 7, 2 }},
		{"worker", []string{"--prefix", "demo/1", "--client-id", "w1"}, func(c *config.Config) { c.Prefix, c.Remote.ClientID = "demo/1", "w1" }},
		{"serve", []string{"--concurrency", "1"}, func(c *config.Config) { c.Worker.Concurrency = 1 }},
		{"serve", []string{"--throttle=false"}, func(c *config.Config) { c.Throttle.Enabled = false }},
		{"serve", []string{"--http-addr", ":9"}, func(c *config.Config) { c.HTTP.Addr = ":9" }},
		{"sim", []string{"--broker", "unix:///run/mqtt.sock", "--prefix", "p", "--devices", "3"}, func(c *config.Config) {
			c.Remote.Broker, c.Prefix = "unix:///run/mqtt.sock", "p"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.cmd+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			isolate(t)
			got, err := load(t, tt.cmd, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			want := config.Default()
			tt.want(&want)
			if !strings.Contains(strings.Join(tt.args, " "), "--client-id") {
				want.Remote.ClientID = got.Remote.ClientID // derived from the prefix, checked in config
			}
			if tt.cmd == "worker" {
				want.Node = config.DefaultFor(config.WorkerCmd).Node
			}
			gotY, _ := got.YAML()
			wantY, _ := want.YAML()
			if string(gotY) != string(wantY) {
				t.Errorf("config:\n%s\nwant:\n%s", gotY, wantY)
			}
		})
	}
}

func TestUnknownEnvironmentVariables(t *testing.T) {
	t.Run("reported", func(t *testing.T) {
		for _, args := range [][]string{{"serve", "--print-config"}, {"worker"}, {"models"}, {"sim"}} {
			isolate(t)
			t.Setenv("MQTTINFER_FOO", "1")
			t.Setenv("MQTTINFER_REMOTE_BROKR", "tcp://h:1883")
			_, err := run(t, args...)
			if err == nil || !strings.Contains(err.Error(), `unknown variable "MQTTINFER_FOO"`) ||
				!strings.Contains(err.Error(), `"MQTTINFER_REMOTE_BROKR" (did you mean "MQTTINFER_REMOTE_BROKER"?)`) {
				t.Errorf("mqttinfer %s: %v, want both variables named", strings.Join(args, " "), err)
			}
		}
	})
	t.Run("not options but known", func(t *testing.T) {
		isolate(t)
		t.Setenv("MQTTINFER_REQUIRE_TESTDATA", "1")
		t.Setenv("MQTTINFER_CHAT_API_KEY", "sk-test")
		t.Setenv("MQTTINFER_CONFIG", writeFile(t, "c.yaml", "prefix: fromfile\n"))
		out, err := run(t, "serve", "--print-config")
		if err != nil || !strings.Contains(out, "prefix: fromfile") || strings.Contains(out, "sk-test") {
			t.Fatalf("serve --print-config: %v\n%s", err, out)
		}
	})
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const catalog = `{"models":[{"name":"anomaly","version":"1","description":"telemetry anomaly detection","cost":1}]}`

// startBroker starts a mochi broker on l with the catalog of prefix
// retained, and returns its address scheme://l.Address().
func startBroker(t *testing.T, scheme, prefix string, l listeners.Listener) string {
	t.Helper()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sync.OnceFunc(func() { _ = srv.Close() }))
	if err := srv.Publish(topics.Models(prefix, "v1"), []byte(catalog), true, 0); err != nil {
		t.Fatal(err)
	}
	return scheme + "://" + l.Address()
}

// TestClientsConnectLikeTheWorker reads the catalog with `mqttinfer models`
// from brokers that need TLS with a private CA and a client certificate, or
// a unix socket, with the connection given by flags, the environment or the
// config file.
func TestClientsConnectLikeTheWorker(t *testing.T) {
	ca, dir := testenv.NewCA(t), t.TempDir()
	caFile, otherCAFile := ca.CertFile(t, dir), testenv.NewCA(t).CertFile(t, t.TempDir())
	certFile, keyFile := ca.ClientFiles(t, dir, "ops")
	server, err := tls.LoadX509KeyPair(ca.ServerFiles(t, dir, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	tlsBroker := startBroker(t, "ssl", "site/7", listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}}))
	sock := filepath.Join(t.TempDir(), "mqtt.sock")
	unixBroker := startBroker(t, "unix", "mqttinfer", listeners.NewUnixSock(listeners.Config{ID: "unix", Address: sock}))
	tlsFlags := []string{"--ca-file", caFile, "--cert-file", certFile, "--key-file", keyFile}

	tests := []struct {
		name    string
		env     map[string]string
		file    string // config file, "" for none
		args    []string
		wantErr string // "" = the catalog is printed
	}{
		{name: "flags", args: append([]string{"--broker", tlsBroker, "--prefix", "site/7"}, tlsFlags...)},
		{name: "environment", env: map[string]string{
			"MQTTINFER_REMOTE_BROKER": tlsBroker, "MQTTINFER_PREFIX": "site/7",
			"MQTTINFER_REMOTE_TLS_CA_FILE": caFile, "MQTTINFER_REMOTE_TLS_CERT_FILE": certFile, "MQTTINFER_REMOTE_TLS_KEY_FILE": keyFile,
			"MQTTINFER_REMOTE_USERNAME": "ops", "MQTTINFER_REMOTE_PASSWORD": "pw",
		}},
		{name: "config file", env: map[string]string{"MQTTINFER_REMOTE_PASSWORD": "pw"},
			file: "prefix: site/7\nremote:\n  broker: " + tlsBroker + "\n  username: ops\n  tls_ca_file: " + caFile +
				"\n  tls_cert_file: " + certFile + "\n  tls_key_file: " + keyFile + "\n"},
		{name: "unix socket", args: []string{"--broker", unixBroker}},
		{name: "another CA", args: []string{"--broker", tlsBroker, "--prefix", "site/7", "--ca-file", otherCAFile, "--cert-file", certFile, "--key-file", keyFile},
			wantErr: "certificate signed by unknown authority"},
		{name: "certificate without key", args: []string{"--broker", tlsBroker, "--cert-file", certFile},
			wantErr: "remote.tls_cert_file"},
		{name: "TLS files on tcp", args: append([]string{"--broker", "tcp://127.0.0.1:1"}, tlsFlags...),
			wantErr: "tcp:// does not use TLS"},
		{name: "password without username", args: []string{"--broker", unixBroker, "--password", "pw"},
			wantErr: "remote.password is set but remote.username is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append([]string{"models", "--timeout", "5s"}, tt.args...)
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "c.yaml", tt.file))
			}
			out, err := run(t, args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("mqttinfer %s: %v, want an error containing %q", strings.Join(args, " "), err, tt.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(out, "anomaly") {
				t.Fatalf("mqttinfer %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// TestHelpShowsOnlyOwnFlags checks a few lines of help that scripts and the
// README rely on.
func TestHelpShowsOnlyOwnFlags(t *testing.T) {
	isolate(t)
	for _, tt := range []struct {
		cmd      string
		has, not []string
	}{
		{"worker", []string{"--throttle[", "--worker-throttle", "--concurrency", "--http-addr", "--ca-file", "--cert-file", "--key-file", "--client-id"},
			[]string{"--in-process", "--mqtt-addr", "--pprof", "--password"}},
		{"serve", []string{"--throttle[", "--in-process", "--print-config"}, []string{"--broker", "--worker-throttle", "--ca-file"}},
		{"sim", []string{"--broker", "--prefix", "--password", "--ca-file", "--id-prefix", "--devices"}, []string{"--node", "--client-id"}},
	} {
		help, err := run(t, tt.cmd, "--help")
		if err != nil {
			t.Fatal(err)
		}
		_, out, _ := strings.Cut(help, "Flags:")
		for _, f := range tt.has {
			if !strings.Contains(out, f) {
				t.Errorf("%s --help lacks %s:\n%s", tt.cmd, f, out)
			}
		}
		for _, f := range tt.not {
			if strings.Contains(out, f) {
				t.Errorf("%s --help shows %s:\n%s", tt.cmd, f, out)
			}
		}
	}
}
