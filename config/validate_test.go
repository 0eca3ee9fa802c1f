package config

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/topics"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		known  []string // builtin when nil
		wants  []string // substrings of the error; none means valid
		n      int      // problems reported, when not 1
	}{
		{name: "node", change: func(c *Config) { c.Node = "a b" }, wants: []string{`node = "a b": invalid id`}},
		{name: "empty node", change: func(c *Config) { c.Node = "" }, wants: []string{`node = "": invalid id: empty`}},
		{name: "prefix wildcard", change: func(c *Config) { c.Prefix = "a/+" }, wants: []string{`prefix = "a/+"`, "must not contain '+'"}},
		{name: "prefix empty level", change: func(c *Config) { c.Prefix = "a//b" }, wants: []string{`prefix = "a//b"`, "empty level"}},
		{name: "prefix with levels", change: func(c *Config) { c.Prefix = "site/7" }},
		{name: "log level", change: func(c *Config) { c.LogLevel = "verbose" }, wants: []string{`log_level = "verbose": must be one of debug, info, warn, error`}},
		{name: "log format", change: func(c *Config) { c.LogFormat = "xml" }, wants: []string{`log_format = "xml": must be text or json`}},
		{name: "addr without port", change: func(c *Config) { c.MQTT.TCPAddr = "localhost" }, wants: []string{`mqtt.tcp_addr = "localhost": not host:port`}},
		{name: "addr port too big", change: func(c *Config) { c.MQTT.WSAddr = "127.0.0.1:70000" }, wants: []string{`mqtt.ws_addr = "127.0.0.1:70000": port "70000" must be a number 0..65535`}},
		{name: "addr named port", change: func(c *Config) { c.HTTP.Addr = ":http" }, wants: []string{`http.addr = ":http": port "http" must be a number`}},
		{name: "addr bad host", change: func(c *Config) { c.HTTP.Addr = "a b:80" }, wants: []string{`http.addr = "a b:80": host "a b"`}},
		{name: "addrs may be empty or any-host or port 0", change: func(c *Config) {
			c.MQTT.TCPAddr, c.MQTT.WSAddr, c.HTTP.Addr = "", ":0", "[::1]:0"
		}},
		{name: "same address twice", change: func(c *Config) { c.HTTP.Addr = c.MQTT.TCPAddr }, wants: []string{`http.addr = "127.0.0.1:1883": the same address as mqtt.tcp_addr`}},
		{name: "packet size zero", change: func(c *Config) { c.MQTT.MaxPacketSize = 0 }, wants: []string{"mqtt.max_packet_size = 0: must be greater than 0 bytes"}},
		{name: "packet size over MQTT", change: func(c *Config) { c.MQTT.MaxPacketSize = 1 << 30 }, wants: []string{"mqtt.max_packet_size = 1073741824: must be at most 268435455 bytes"}},
		{name: "request over packet", change: func(c *Config) { c.MQTT.MaxRequestSize = c.MQTT.MaxPacketSize + 1 }, wants: []string{"mqtt.max_request_size = 4194305: must be at most mqtt.max_packet_size (4194304 bytes)"}},
		{name: "model request over packet", change: func(c *Config) { c.Models.Detect.MaxRequestSize = c.MQTT.MaxPacketSize + 1 }, wants: []string{"models.detect.max_request_size = 4194305: must be at most mqtt.max_packet_size (4194304 bytes)"}},
		{name: "tls addr without cert", change: func(c *Config) { c.MQTT.TLSAddr = "127.0.0.1:8883" }, wants: []string{"mqtt.tls_addr = \"127.0.0.1:8883\": needs tls.cert_file"}},
		{name: "cert without key", change: func(c *Config) { c.TLS.CertFile = "c.pem" }, wants: []string{"tls.key_file = \"\": must be set with tls.cert_file"}},
		{name: "identity", change: func(c *Config) { c.TLS.Identity = "email" }, wants: []string{"tls.identity = \"email\": must be cn or san"}},
		{name: "client ca without cert", change: func(c *Config) { c.TLS.ClientCAFile = "ca.pem" }, wants: []string{"tls.client_ca_file = \"ca.pem\": needs tls.cert_file"}},
		{name: "request zero", change: func(c *Config) { c.MQTT.MaxRequestSize = 0 }, wants: []string{"mqtt.max_request_size = 0: must be greater than 0"}},
		{name: "writes pending", change: func(c *Config) { c.MQTT.MaxClientWritesPending = 0 }, wants: []string{"mqtt.max_client_writes_pending = 0: must be 1..2147483647 messages"}},
		{name: "max clients", change: func(c *Config) { c.MQTT.MaxClients = -1 }, wants: []string{"mqtt.max_clients = -1: must be 0 (unlimited) or more"}},
		{name: "session expiry short", change: func(c *Config) { c.MQTT.SessionExpiry = 500 * time.Millisecond }, wants: []string{`mqtt.session_expiry = "500ms": must be at least 1s`}},
		{name: "session expiry long", change: func(c *Config) { c.MQTT.SessionExpiry = 200 * 365 * 24 * time.Hour }, wants: []string{"mqtt.session_expiry", "the MQTT limit"}},
		{name: "auth without file", change: func(c *Config) { c.Auth.Enabled = true }, wants: []string{`auth.credentials_file = "": must be set when auth.enabled is true`}},
		{name: "rate zero", change: func(c *Config) { c.Throttle.Rate = 0 }, wants: []string{"throttle.rate = 0: must be a number greater than 0"}},
		{name: "rate negative", change: func(c *Config) { c.Throttle.Rate = -1 }, wants: []string{"throttle.rate = -1: must be"}},
		{name: "rate NaN", change: func(c *Config) { c.Throttle.Rate = math.NaN() }, wants: []string{"throttle.rate = NaN: must be"}},
		{name: "rate Inf", change: func(c *Config) { c.Throttle.Rate = math.Inf(1) }, wants: []string{"throttle.rate = +Inf: must be"}},
		{name: "burst", change: func(c *Config) { c.Throttle.Burst = 0 }, wants: []string{"throttle.burst = 0: must be at least 1 token"}},
		{name: "in flight", change: func(c *Config) { c.Throttle.MaxInFlight = 0 }, wants: []string{"throttle.max_in_flight = 0: must be at least 1 request"}},
		{name: "idle ttl", change: func(c *Config) { c.Throttle.IdleTTL = 0 }, wants: []string{`throttle.idle_ttl = "0s": must be a duration greater than 0`}},
		{name: "rate checked even when throttling is off", change: func(c *Config) { c.Throttle.Enabled = false; c.Throttle.Rate = 0 }, wants: []string{"throttle.rate = 0"}},
		{name: "override pattern empty", change: func(c *Config) { c.Throttle.Overrides = []ThrottleOverride{{}} }, wants: []string{`throttle.overrides[0].pattern = "": must not be empty`}},
		{name: "override pattern syntax", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "ok-*"}, {Pattern: "cam-[a"}}
		}, wants: []string{`throttle.overrides[1].pattern = "cam-[a": not a path.Match pattern: syntax error in pattern`}},
		{name: "override negatives", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "*", Rate: -1, Burst: -2, MaxInFlight: -3}}
		}, wants: []string{
			"throttle.overrides[0].rate = -1: must be 0 (inherit throttle.rate)",
			"throttle.overrides[0].burst = -2: must be 0 (inherit throttle.burst)",
			"throttle.overrides[0].max_in_flight = -3: must be 0 (inherit throttle.max_in_flight)",
		}, n: 3},
		{name: "override unknown model", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "a"}, {Pattern: "b", Costs: map[string]int{"foo": 1}}}
		}, known: []string{"anomaly"}, wants: []string{`unknown model "foo" in throttle.overrides[1].costs (known: anomaly)`}},
		{name: "models.costs unknown model", change: func(c *Config) { c.Models.Costs = map[string]int{"anomaly": 1, "foo": 1} },
			wants: []string{`unknown model "foo" in models.costs (known: anomaly, chat, detect, ocr, vad)`}},
		{name: "no models known", change: func(c *Config) { c.Models.Costs = map[string]int{"anomaly": 1} }, known: []string{},
			wants: []string{`unknown model "anomaly" in models.costs (known: none)`}},
		{name: "model case hint", change: func(c *Config) { c.Models.Costs = map[string]int{"mymodel": 1} }, known: []string{"MyModel"},
			wants: []string{`unknown model "mymodel"`, `keys are read in lower case, so "MyModel" cannot be configured in a file`}},
		{name: "cost zero", change: func(c *Config) { c.Models.Costs = map[string]int{"anomaly": 0} }, wants: []string{"models.costs[anomaly] = 0: a cost must be at least 1 token"}},
		{name: "override cost zero", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "a", Costs: map[string]int{"chat": 0}}}
		}, wants: []string{"throttle.overrides[0].costs[chat] = 0: a cost must be at least 1 token"}},
		{name: "cost over burst", change: func(c *Config) { c.Models.Costs = map[string]int{"chat": 11} },
			wants: []string{"models.costs[chat] = 11: more than throttle.burst (10), so such a request would never be allowed"}},
		{name: "cost over burst is fine without throttling", change: func(c *Config) {
			c.Throttle.Enabled = false
			c.Models.Costs = map[string]int{"chat": 11}
		}},
		{name: "cost over burst counts for remote throttling", change: func(c *Config) {
			c.Throttle.Enabled, c.Remote.Throttle = false, true
			c.Models.Costs = map[string]int{"chat": 11}
		}, wants: []string{"models.costs[chat] = 11: more than throttle.burst"}},
		{name: "override cost over inherited burst", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "a", Costs: map[string]int{"chat": 12}}}
		}, wants: []string{"throttle.overrides[0].costs[chat] = 12: more than throttle.burst (10)"}},
		{name: "override cost over own burst", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "a", Burst: 3, Costs: map[string]int{"chat": 4}}}
		}, wants: []string{"throttle.overrides[0].costs[chat] = 4: more than throttle.overrides[0].burst (3)"}},
		{name: "global cost over override burst", change: func(c *Config) {
			c.Models.Costs = map[string]int{"chat": 5}
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "tiny-*", Burst: 2}}
		}, wants: []string{`models.costs[chat] = 5: more than throttle.overrides[0].burst (2), so devices matching "tiny-*" could never make such a request`}},
		{name: "override own cost shadows global", change: func(c *Config) {
			c.Models.Costs = map[string]int{"chat": 5}
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "tiny-*", Burst: 2, Costs: map[string]int{"chat": 2}}}
		}},
		{name: "override with big burst allows big cost", change: func(c *Config) {
			c.Throttle.Overrides = []ThrottleOverride{{Pattern: "a", Burst: 50, Costs: map[string]int{"chat": 40}}}
		}},
		{name: "worker concurrency", change: func(c *Config) { c.Worker.Concurrency = -1 }, wants: []string{"worker.concurrency = -1: must be 0 (2 × GOMAXPROCS) or more"}},
		{name: "queue size", change: func(c *Config) { c.Worker.QueueSize = 0 }, wants: []string{"worker.queue_size = 0: must be at least 1 request"}},
		{name: "default deadline", change: func(c *Config) { c.Worker.DefaultDeadline = -time.Second }, wants: []string{`worker.default_deadline = "-1s": must be a duration greater than 0`}},
		{name: "max below default deadline", change: func(c *Config) { c.Worker.MaxDeadline = time.Second }, wants: []string{`worker.max_deadline = "1s": must be at least worker.default_deadline (5s)`}},
		{name: "broker scheme", change: func(c *Config) { c.Remote.Broker = "http://h:1883" }, wants: []string{`remote.broker = "http://h:1883": scheme "http" is not one of tcp, mqtt`}},
		{name: "broker no scheme", change: func(c *Config) { c.Remote.Broker = "127.0.0.1:1883" }, wants: []string{`remote.broker = "127.0.0.1:1883"`}},
		{name: "broker no port", change: func(c *Config) { c.Remote.Broker = "tcp://h" }, wants: []string{`remote.broker = "tcp://h": needs a host and a port, like tcp://127.0.0.1:1883`}},
		{name: "broker bad port", change: func(c *Config) { c.Remote.Broker = "ssl://h:0" }, wants: []string{`remote.broker = "ssl://h:0": port "0" must be a number 1..65535`}},
		{name: "broker empty", change: func(c *Config) { c.Remote.Broker = "" }, wants: []string{`remote.broker = "": must be set`}},
		{name: "broker other forms", change: func(c *Config) { c.Remote.Broker = "wss://broker.example:443/mqtt" }},
		{name: "broker unix", change: func(c *Config) { c.Remote.Broker = "unix:///run/mqtt.sock" }},
		{name: "worker http addr", change: func(c *Config) { c.Remote.HTTPAddr = "localhost" }, wants: []string{`remote.http_addr = "localhost": not host:port`}},
		{name: "worker http addr may repeat serve's", change: func(c *Config) { c.Remote.HTTPAddr = c.HTTP.Addr }},
		{name: "group", change: func(c *Config) { c.Remote.Group = "a/b" }, wants: []string{`remote.group = "a/b": invalid id`}},
		{name: "client id", change: func(c *Config) { c.Remote.ClientID = "w#1" }, wants: []string{`remote.client_id = "w#1": invalid id`}},
		{name: "password without username", change: func(c *Config) { c.Remote.Password = "pw" }, wants: []string{"remote.password is set but remote.username is empty"}},
		{name: "remote concurrency", change: func(c *Config) { c.Remote.Concurrency = -2 }, wants: []string{"remote.concurrency = -2: must be 0"}},
		{name: "dedup ttl", change: func(c *Config) { c.Remote.DedupTTL = 0 }, wants: []string{`remote.dedup_ttl = "0s": must be a duration greater than 0`}},
		{name: "anomaly series", change: func(c *Config) { c.Models.Anomaly.MaxSeries = 0 }, wants: []string{"models.anomaly.max_series = 0: must be at least 1"}},
		{name: "anomaly ttl", change: func(c *Config) { c.Models.Anomaly.IdleTTL = 0 }, wants: []string{`models.anomaly.idle_ttl = "0s"`}},
		{name: "all problems at once", change: func(c *Config) {
			c.Node, c.Throttle.Rate, c.Worker.QueueSize = "", 0, 0
		}, wants: []string{"node =", "throttle.rate =", "worker.queue_size ="}, n: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c)
			known := tt.known
			if known == nil {
				known = builtin
			}
			err := c.Validate(known)
			if len(tt.wants) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate = nil, want an error")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\ndoes not contain %q", err, w)
				}
			}
			want := max(tt.n, 1)
			if n := strings.Count(err.Error(), "\n") + 1; n != want {
				t.Errorf("%d problems reported, want %d:\n%v", n, want, err)
			}
		})
	}
}

func TestValidateNilModelsSkipsNames(t *testing.T) {
	c := Default()
	c.Models.Costs = map[string]int{"anything": 1}
	if err := c.Validate(nil); err != nil {
		t.Fatalf("Validate(nil): %v", err)
	}
	if err := c.Validate([]string{"anomaly"}); err == nil {
		t.Fatal("Validate([anomaly]) accepted an unknown model")
	}
}

func TestSanitizeID(t *testing.T) {
	for in, want := range map[string]string{
		"edge-01.local":         "edge-01.local",
		"my host":               "my-host",
		"":                      "mqttinfer",
		"h\u00e9":               "h--",
		strings.Repeat("x", 70): strings.Repeat("x", 64),
	} {
		got := sanitizeID(in)
		if got != want {
			t.Errorf("sanitizeID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWorkerClientID(t *testing.T) {
	long := strings.Repeat("p", 70)
	for _, tt := range []struct{ prefix, want string }{
		{"mqttinfer", "mqttinfer-worker-0a1b2c3d"},
		{"mqttinfer-3f9c2a", "mqttinfer-3f9c2a-worker-0a1b2c3d"},
		{"site/7", "site-7-worker-0a1b2c3d"},
		{"a b+é", "a-b----worker-0a1b2c3d"},
		{long, long[:64-len("-worker-0a1b2c3d")] + "-worker-0a1b2c3d"},
	} {
		got := workerClientID(tt.prefix, "0a1b2c3d")
		if got != tt.want {
			t.Errorf("workerClientID(%q) = %q, want %q", tt.prefix, got, tt.want)
		}
		if err := topics.ValidID(got); err != nil {
			t.Errorf("workerClientID(%q) = %q: %v", tt.prefix, got, err)
		}
	}
	c := defaults()
	c.Prefix = long
	c.resolve()
	if len(c.Remote.ClientID) != 64 || !strings.HasSuffix(c.Remote.ClientID, "-worker-"+instance()) || c.Validate(builtin) != nil {
		t.Fatalf("client id %q (%d bytes): %v", c.Remote.ClientID, len(c.Remote.ClientID), c.Validate(builtin))
	}
	if len(instance()) != 8 {
		t.Errorf("random part %q, want 8 hex digits", instance())
	}
}

func TestPoolSize(t *testing.T) {
	if (Worker{Concurrency: 3}).PoolSize() != 3 || (Remote{Concurrency: 7}).PoolSize() != 7 {
		t.Error("an explicit concurrency is not kept")
	}
	if n := (Worker{}).PoolSize(); n < 2 || n%2 != 0 {
		t.Errorf("PoolSize with 0 = %d, want 2 × GOMAXPROCS", n)
	}
}

func TestLogger(t *testing.T) {
	var buf strings.Builder
	c := Default()
	c.LogLevel, c.LogFormat = "warn", "json"
	log := c.Logger(&buf)
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) || !strings.Contains(out, `"k":1`) {
		t.Errorf("json logger at warn wrote %q", out)
	}
	buf.Reset()
	c.LogLevel, c.LogFormat = "debug", "text"
	c.Logger(&buf).Debug("visible")
	if out := buf.String(); !strings.Contains(out, "level=DEBUG msg=visible") {
		t.Errorf("text logger at debug wrote %q", out)
	}
}
