package config

import (
	"cmp"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// builtin is the model list tests validate against.
var builtin = []string{"anomaly", "vad", "ocr", "detect", "chat"}

// isolate clears every MQTTINFER_* variable and moves into an empty
// directory, so that neither the environment nor a stray ./mqttinfer.yaml
// changes what a test loads.
func isolate(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		n, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(n, EnvPrefix+"_") {
			continue
		}
		t.Setenv(n, "") // restores the old value at cleanup
		if err := os.Unsetenv(n); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(t.TempDir())
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// flags parses args with the flags of serve.
func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	return flagsOf(t, ServeCmd, args...)
}

// flagsOf parses args with the flags of cmd.
func flagsOf(t *testing.T, cmd Command, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet(cmd.String(), pflag.ContinueOnError)
	BindFlags(fs, cmd)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return fs
}

func TestDefaultValidates(t *testing.T) {
	d := Default()
	for _, known := range [][]string{nil, {}, builtin} {
		if err := d.Validate(known); err != nil {
			t.Errorf("Default().Validate(%v): %v", known, err)
		}
	}
	if want := "mqttinfer-worker-" + instance(); d.Remote.ClientID != want {
		t.Errorf("default remote.client_id = %q, want %q", d.Remote.ClientID, want)
	}
	if again := Default(); again.Remote.ClientID != d.Remote.ClientID {
		t.Errorf("a second Default() has client id %q, the first %q: the random part must be drawn once", again.Remote.ClientID, d.Remote.ClientID)
	}
}

func TestLoadWithNothingIsDefault(t *testing.T) {
	isolate(t)
	for name, fs := range map[string]*pflag.FlagSet{"nil flags": nil, "no args": flags(t)} {
		c, err := Load(fs)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("%s: Load = %+v\nwant Default() = %+v", name, c, Default())
		}
	}
}

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name string
		file string // YAML, "" for no file
		env  map[string]string
		cmd  Command // whose flags args are; serve when 0
		args []string
		want func(c *Config) // changes from Default()
	}{
		{
			name: "file",
			file: "prefix: site1\nmqtt:\n  tcp_addr: 127.0.0.1:1999\nthrottle:\n  rate: 2.5\n  idle_ttl: 90s\n",
			want: func(c *Config) {
				c.Prefix = "site1"
				c.MQTT.TCPAddr = "127.0.0.1:1999"
				c.Throttle.Rate = 2.5
				c.Throttle.IdleTTL = 90 * time.Second
			},
		},
		{
			name: "env over file",
			file: "prefix: site1\nthrottle:\n  rate: 2.5\n  burst: 7\n",
			env:  map[string]string{"MQTTINFER_THROTTLE_RATE": "9", "MQTTINFER_MQTT_TCP_ADDR": "127.0.0.1:2000"},
			want: func(c *Config) {
				c.Prefix = "site1"
				c.Throttle.Rate = 9
				c.Throttle.Burst = 7
				c.MQTT.TCPAddr = "127.0.0.1:2000"
			},
		},
		{
			name: "flag over env over file",
			file: "throttle:\n  rate: 2.5\n  burst: 7\nprefix: site1\n",
			env:  map[string]string{"MQTTINFER_THROTTLE_RATE": "9", "MQTTINFER_THROTTLE_BURST": "8"},
			args: []string{"--throttle-rate=12", "--prefix", "site2"},
			want: func(c *Config) {
				c.Throttle.Rate = 12
				c.Throttle.Burst = 8
				c.Prefix = "site2"
			},
		},
		{
			name: "unset flag keeps file and env",
			file: "log_level: debug\n",
			env:  map[string]string{"MQTTINFER_HTTP_ADDR": "127.0.0.1:9000"},
			args: []string{"--node", "n1"},
			want: func(c *Config) {
				c.LogLevel = "debug"
				c.HTTP.Addr = "127.0.0.1:9000"
				c.Node = "n1"
			},
		},
		{
			name: "empty env disables a listener",
			env:  map[string]string{"MQTTINFER_MQTT_WS_ADDR": ""},
			want: func(c *Config) { c.MQTT.WSAddr = "" },
		},
		{
			name: "empty flag disables a listener",
			file: "http:\n  addr: 127.0.0.1:9000\n",
			args: []string{"--http-addr="},
			want: func(c *Config) { c.HTTP.Addr = "" },
		},
		{
			name: "bools and durations everywhere",
			file: "auth:\n  enabled: true\n  credentials_file: creds.yaml\nworker:\n  default_deadline: 2s\n",
			env:  map[string]string{"MQTTINFER_WORKER_IN_PROCESS": "false", "MQTTINFER_REMOTE_DEDUP_TTL": "5m", "MQTTINFER_REMOTE_THROTTLE": "true"},
			args: []string{"--throttle=false"},
			want: func(c *Config) {
				c.Auth = Auth{Enabled: true, CredentialsFile: "creds.yaml"}
				c.Worker.DefaultDeadline = 2 * time.Second
				c.Worker.InProcess = false
				c.Remote.DedupTTL = 5 * time.Minute
				c.Throttle.Enabled = false
				c.Remote.Throttle = true
			},
		},
		{
			name: "the prefix follows into the client id",
			env:  map[string]string{"MQTTINFER_PREFIX": "site/7"},
			want: func(c *Config) { c.Prefix = "site/7"; c.Remote.ClientID = "site-7-worker-" + instance() },
		},
		{
			name: "host:port is a tcp:// broker",
			env:  map[string]string{"MQTTINFER_REMOTE_BROKER": "broker.example:1884"},
			want: func(c *Config) { c.Remote.Broker = "tcp://broker.example:1884" },
		},
		{
			name: "explicit client id",
			file: "remote:\n  client_id: w-1\n  password: pw\n  username: u\n",
			args: []string{"--node", "edge-7"},
			want: func(c *Config) {
				c.Node = "edge-7"
				c.Remote.ClientID = "w-1"
				c.Remote.Password = "pw"
				c.Remote.Username = "u"
			},
		},
		{
			name: "maps and lists from the file",
			file: `
models:
  costs: {anomaly: 2, yolo.v8: 3}
  anomaly: {max_series: 50, idle_ttl: 30m}
throttle:
  overrides:
    - pattern: Cam-*
      rate: 1
      costs: {anomaly: 4}
    - {pattern: "gw-?", max_in_flight: 9}
`,
			want: func(c *Config) {
				c.Models.Costs = map[string]int{"anomaly": 2, "yolo.v8": 3}
				c.Models.Anomaly = Anomaly{MaxSeries: 50, IdleTTL: 30 * time.Minute}
				c.Throttle.Overrides = []ThrottleOverride{
					{Pattern: "Cam-*", Rate: 1, Costs: map[string]int{"anomaly": 4}}, // values keep their case
					{Pattern: "gw-?", MaxInFlight: 9},
				}
			},
		},
		{
			name: "maps and lists from the environment replace the file's",
			file: "models:\n  costs: {anomaly: 2}\nthrottle:\n  overrides: [{pattern: x}]\n",
			env: map[string]string{
				"MQTTINFER_MODELS_COSTS":       "{chat: 5}",
				"MQTTINFER_THROTTLE_OVERRIDES": "[{pattern: cam-*, burst: 3, costs: {anomaly: 2}}]",
			},
			want: func(c *Config) {
				c.Models.Costs = map[string]int{"chat": 5}
				c.Throttle.Overrides = []ThrottleOverride{{Pattern: "cam-*", Burst: 3, Costs: map[string]int{"anomaly": 2}}}
			},
		},
		{
			name: "empty collections are nil",
			file: "models:\n  costs: {}\nthrottle:\n  overrides: []\n",
			want: func(c *Config) {},
		},
		{
			name: "keys are case-insensitive",
			file: "MQTT:\n  TCP_Addr: 127.0.0.1:1\n",
			want: func(c *Config) { c.MQTT.TCPAddr = "127.0.0.1:1" },
		},
		{
			name: "every flag of serve",
			args: []string{
				"--node=n2", "--prefix=p/q", "--log-level=warn", "--log-format=json",
				"--mqtt-addr=:1", "--ws-addr=:2", "--max-packet-size=1000", "--max-request-size=900",
				"--max-clients=3", "--http-addr=:4", "--pprof", "--auth", "--credentials=c.yaml",
				"--throttle=false", "--throttle-rate=0.5", "--throttle-burst=2", "--throttle-in-flight=1",
				"--in-process=false", "--concurrency=3", "--queue-size=5",
				"--models-dir=m", "--model-threads=2", "--chat-url=http://h/v1", "--chat-model=llm",
			},
			want: func(c *Config) {
				c.Node, c.Prefix, c.LogLevel, c.LogFormat = "n2", "p/q", "warn", "json"
				c.MQTT.TCPAddr, c.MQTT.WSAddr, c.MQTT.MaxPacketSize, c.MQTT.MaxRequestSize = ":1", ":2", 1000, 900
				c.MQTT.MaxClients, c.HTTP.Addr, c.HTTP.Pprof = 3, ":4", true
				c.Auth = Auth{Enabled: true, CredentialsFile: "c.yaml"}
				c.Throttle.Enabled, c.Throttle.Rate, c.Throttle.Burst, c.Throttle.MaxInFlight = false, 0.5, 2, 1
				c.Worker.InProcess, c.Worker.Concurrency, c.Worker.QueueSize = false, 3, 5
				c.Models.Dir, c.Models.Threads, c.Models.Chat.BaseURL, c.Models.Chat.Model = "m", 2, "http://h/v1", "llm"
			},
		},
		{
			name: "every flag of worker",
			cmd:  WorkerCmd,
			args: []string{
				"--node=n2", "--prefix=p/q", "--log-level=warn", "--log-format=json", "--max-request-size=900",
				"--throttle-rate=0.5", "--throttle-burst=2", "--throttle-in-flight=1", "--queue-size=5",
				"--broker=ws://h:80/mqtt", "--group=g", "--client-id=cid", "--username=u",
				"--ca-file=ca.pem", "--cert-file=c.pem", "--key-file=k.pem", "--tls-server-name=b.example",
				"--throttle", "--concurrency=6", "--http-addr=:9100",
				"--models-dir=m", "--model-threads=2", "--chat-url=http://h/v1", "--chat-model=llm",
			},
			want: func(c *Config) {
				c.Node, c.Prefix, c.LogLevel, c.LogFormat, c.MQTT.MaxRequestSize = "n2", "p/q", "warn", "json", 900
				c.Throttle.Rate, c.Throttle.Burst, c.Throttle.MaxInFlight, c.Worker.QueueSize = 0.5, 2, 1, 5
				c.Remote.Broker, c.Remote.Group, c.Remote.ClientID, c.Remote.Username = "ws://h:80/mqtt", "g", "cid", "u"
				c.Remote.TLSCAFile, c.Remote.TLSCertFile, c.Remote.TLSKeyFile, c.Remote.TLSServerName = "ca.pem", "c.pem", "k.pem", "b.example"
				c.Remote.Throttle, c.Remote.Concurrency, c.Remote.HTTPAddr = true, 6, ":9100"
				c.Models.Dir, c.Models.Threads, c.Models.Chat.BaseURL, c.Models.Chat.Model = "m", 2, "http://h/v1", "llm"
			},
		},
		{
			name: "the worker's aliases",
			cmd:  WorkerCmd,
			args: []string{"--worker-throttle", "--worker-concurrency=2"},
			want: func(c *Config) { c.Remote.Throttle, c.Remote.Concurrency = true, 2 },
		},
		{
			name: "every flag of the clients",
			cmd:  ClientCmd,
			args: []string{
				"--prefix=p/q", "--broker=unix:///run/mqtt.sock", "--username=u", "--password=pw",
				"--ca-file=ca.pem", "--cert-file=c.pem", "--key-file=k.pem", "--tls-server-name=b.example",
			},
			want: func(c *Config) {
				c.Prefix, c.Remote.Broker, c.Remote.Username, c.Remote.Password = "p/q", "unix:///run/mqtt.sock", "u", "pw"
				c.Remote.TLSCAFile, c.Remote.TLSCertFile, c.Remote.TLSKeyFile, c.Remote.TLSServerName = "ca.pem", "c.pem", "k.pem", "b.example"
			},
		},
		{
			name: "the clients read the connection from the file and the environment",
			cmd:  ClientCmd,
			file: "prefix: site1\nremote:\n  broker: ssl://b.example:8883\n  username: u\n  tls_ca_file: ca.pem\n",
			env:  map[string]string{"MQTTINFER_REMOTE_PASSWORD": "pw"},
			args: []string{"--username=v"},
			want: func(c *Config) {
				c.Prefix, c.Remote.Broker, c.Remote.Username, c.Remote.Password = "site1", "ssl://b.example:8883", "v", "pw"
				c.Remote.TLSCAFile = "ca.pem"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeFile(t, "c.yaml", tt.file)}, args...)
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			got, err := Load(flagsOf(t, cmp.Or(tt.cmd, ServeCmd), args...))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := defaultsFor(cmp.Or(tt.cmd, ServeCmd))
			tt.want(&want)
			want.resolve()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestConfigFileSelection(t *testing.T) {
	t.Run("./mqttinfer.yaml when present", func(t *testing.T) {
		isolate(t)
		if err := os.WriteFile(DefaultFile, []byte("prefix: local\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(flags(t))
		if err != nil || c.Prefix != "local" {
			t.Fatalf("Load = prefix %q, %v; want local", c.Prefix, err)
		}
	})
	t.Run("$MQTTINFER_CONFIG", func(t *testing.T) {
		isolate(t)
		t.Setenv(EnvConfigFile, writeFile(t, "env.yaml", "prefix: fromenv\n"))
		c, err := Load(nil)
		if err != nil || c.Prefix != "fromenv" {
			t.Fatalf("Load = prefix %q, %v; want fromenv", c.Prefix, err)
		}
	})
	t.Run("--config beats $MQTTINFER_CONFIG and ./mqttinfer.yaml", func(t *testing.T) {
		isolate(t)
		if err := os.WriteFile(DefaultFile, []byte("prefix: local\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(EnvConfigFile, writeFile(t, "env.yaml", "prefix: fromenv\n"))
		c, err := Load(flags(t, "--config", writeFile(t, "flag.yaml", "prefix: fromflag\n")))
		if err != nil || c.Prefix != "fromflag" {
			t.Fatalf("Load = prefix %q, %v; want fromflag", c.Prefix, err)
		}
	})
	for name, setup := range map[string]func(t *testing.T) *pflag.FlagSet{
		"missing --config": func(t *testing.T) *pflag.FlagSet { return flags(t, "--config", "nope.yaml") },
		"missing $MQTTINFER_CONFIG": func(t *testing.T) *pflag.FlagSet {
			t.Setenv(EnvConfigFile, "nope.yaml")
			return nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			isolate(t)
			_, err := Load(setup(t))
			if err == nil || !strings.Contains(err.Error(), "nope.yaml") || !os.IsNotExist(unwrapAll(err)) {
				t.Fatalf("Load: %v; want a not-exist error naming nope.yaml", err)
			}
		})
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		env   map[string]string
		cmd   Command // whose flags args are; serve when 0
		args  []string
		wants []string // substrings of the error
		not   string   // not a substring of the error, when set
	}{
		{name: "unknown top-level key", file: "prefx: a\n", wants: []string{`unknown key "prefx"`, `did you mean "prefix"`}},
		{name: "unknown nested key", file: "mqtt:\n  tcp_adr: :1\n", wants: []string{`unknown key "mqtt.tcp_adr"`, `"mqtt.tcp_addr"`}},
		{name: "key in the wrong section", file: "mqtt:\n  burst: 3\n", wants: []string{`unknown key "mqtt.burst"`, `"throttle.burst"`}},
		{name: "every unknown key", file: "a: 1\nb: 2\n", wants: []string{`unknown key "a"`, `unknown key "b"`}},
		{name: "section as a value", file: "mqtt: 5\n", wants: []string{`"mqtt" must be a mapping`}},
		{name: "value as a section", file: "prefix:\n  x: 1\n", wants: []string{`prefix (from file`, `expected type 'string'`}},
		{name: "unknown override field", file: "throttle:\n  overrides:\n    - {pattern: a, ratee: 1}\n", wants: []string{"throttle.overrides[0] (from file", "invalid keys: ratee"}},
		{name: "env named over file", file: "throttle:\n  burst: 3\n", env: map[string]string{"MQTTINFER_THROTTLE_BURST": "x"}, wants: []string{"throttle.burst (from MQTTINFER_THROTTLE_BURST)"}},
		{name: "bare number duration", file: "throttle:\n  idle_ttl: 600\n", wants: []string{"idle_ttl", "duration 600 has no unit"}},
		{name: "bad duration", file: "worker:\n  max_deadline: soon\n", wants: []string{"max_deadline", `"soon" is not a duration`}},
		{name: "empty number in env", env: map[string]string{"MQTTINFER_THROTTLE_BURST": ""}, wants: []string{"throttle.burst", `"" is not a whole number`}},
		{name: "bad bool in env", env: map[string]string{"MQTTINFER_AUTH_ENABLED": "yes"}, wants: []string{"auth.enabled", `"yes" is not true or false`}},
		{name: "bad number", file: "throttle:\n  burst: lots\n", wants: []string{"throttle.burst", `"lots" is not a whole number`}},
		{name: "bad YAML", file: "mqtt: [\n", wants: []string{"c.yaml"}},
		{name: "bad env number", env: map[string]string{"MQTTINFER_THROTTLE_RATE": "fast"}, wants: []string{"throttle.rate (from MQTTINFER_THROTTLE_RATE)", `"fast" is not a number`}},
		{name: "bad env map", env: map[string]string{"MQTTINFER_MODELS_COSTS": "{anomaly: [}"}, wants: []string{"costs", "YAML flow syntax"}},
		{name: "bad flag duration via env", env: map[string]string{"MQTTINFER_MQTT_SESSION_EXPIRY": "3600"}, wants: []string{"mqtt.session_expiry", `"3600" is not a duration`}},
		{name: "unknown env", env: map[string]string{"MQTTINFER_FOO": "1"}, wants: []string{`environment: unknown variable "MQTTINFER_FOO"`}, not: "did you mean"},
		{name: "misspelt env", env: map[string]string{"MQTTINFER_THROTTLE_RAT": "1"}, wants: []string{`unknown variable "MQTTINFER_THROTTLE_RAT" (did you mean "MQTTINFER_THROTTLE_RATE"?)`}},
		{name: "env in the wrong section", env: map[string]string{"MQTTINFER_WORKER_DEDUP_TTL": "1m"}, wants: []string{`"MQTTINFER_WORKER_DEDUP_TTL" (did you mean "MQTTINFER_REMOTE_DEDUP_TTL"?)`}},
		{name: "every unknown env", env: map[string]string{"MQTTINFER_A": "", "MQTTINFER_B": "x"}, wants: []string{`"MQTTINFER_A"`, `"MQTTINFER_B"`}},
		{name: "misspelt reserved env", env: map[string]string{"MQTTINFER_CONFG": "c.yaml"}, wants: []string{`"MQTTINFER_CONFG" (did you mean "MQTTINFER_CONFIG"?)`}},
		{name: "the default key variable when the file names another",
			file: "models:\n  chat:\n    api_key_env: OPENAI_API_KEY\n", env: map[string]string{"MQTTINFER_CHAT_API_KEY": "sk"},
			wants: []string{`unknown variable "MQTTINFER_CHAT_API_KEY" (models.chat.api_key_env is "OPENAI_API_KEY"`}},
		{name: "unknown env and a bad value", env: map[string]string{"MQTTINFER_FOO": "1", "MQTTINFER_THROTTLE_BURST": "x"},
			wants: []string{`unknown variable "MQTTINFER_FOO"`, "throttle.burst (from MQTTINFER_THROTTLE_BURST)"}},
		{name: "a flag and its alias", cmd: WorkerCmd, args: []string{"--throttle", "--worker-throttle=false"},
			wants: []string{"--throttle and --worker-throttle both set remote.throttle: give only one of them"}},
		{name: "worker flag named in errors", cmd: WorkerCmd, args: []string{"--http-addr=x"}, env: map[string]string{"MQTTINFER_REMOTE_CONCURRENCY": "many"},
			wants: []string{"remote.concurrency (from MQTTINFER_REMOTE_CONCURRENCY)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeFile(t, "c.yaml", tt.file)}, args...)
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := Load(flagsOf(t, cmp.Or(tt.cmd, ServeCmd), args...))
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			t.Log(err)
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if tt.not != "" && strings.Contains(err.Error(), tt.not) {
				t.Errorf("error %q contains %q", err, tt.not)
			}
		})
	}
}

// TestFlagDefaultsAreTheDefaults checks that help shows the real defaults:
// giving each flag of each command its own default value changes nothing.
func TestFlagDefaultsAreTheDefaults(t *testing.T) {
	isolate(t)
	for _, cmd := range []Command{ServeCmd, WorkerCmd, ClientCmd} {
		flagsOf(t, cmd).VisitAll(func(f *pflag.Flag) {
			if f.Name == FlagConfig {
				return
			}
			c, err := Load(flagsOf(t, cmd, "--"+f.Name+"="+f.DefValue))
			if err != nil {
				t.Fatalf("%s --%s=%s: %v", cmd, f.Name, f.DefValue, err)
			}
			if !reflect.DeepEqual(c, DefaultFor(cmd)) {
				t.Errorf("%s --%s=%s (its help default) gives %+v, want DefaultFor(%s)", cmd, f.Name, f.DefValue, c, cmd)
			}
		})
	}
}

// TestCommandFlags pins the flags of each command: only those of the
// options it uses, under the names scripts use.
func TestCommandFlags(t *testing.T) {
	tests := []struct {
		cmd  Command
		want map[string]string // flag → key it sets
	}{
		{ServeCmd, map[string]string{
			"node": "node", "prefix": "prefix", "log-level": "log_level", "log-format": "log_format",
			"mqtt-addr": "mqtt.tcp_addr", "ws-addr": "mqtt.ws_addr", "max-packet-size": "mqtt.max_packet_size",
			"mqtt-tls-addr": "mqtt.tls_addr", "tls-cert": "tls.cert_file", "tls-key": "tls.key_file", "tls-client-ca": "tls.client_ca_file",
			"storage-dir":      "storage.dir",
			"max-request-size": "mqtt.max_request_size", "max-clients": "mqtt.max_clients",
			"http-addr": "http.addr", "pprof": "http.pprof", "auth": "auth.enabled", "credentials": "auth.credentials_file",
			"throttle": "throttle.enabled", "throttle-rate": "throttle.rate", "throttle-burst": "throttle.burst",
			"throttle-in-flight": "throttle.max_in_flight", "in-process": "worker.in_process",
			"concurrency": "worker.concurrency", "queue-size": "worker.queue_size",
			"models-dir": "models.dir", "model-threads": "models.threads", "chat-url": "models.chat.base_url", "chat-model": "models.chat.model",
			"cluster": "cluster.url", "model-repository": "models.repository",
		}},
		{WorkerCmd, map[string]string{
			"node": "node", "prefix": "prefix", "log-level": "log_level", "log-format": "log_format", "max-request-size": "mqtt.max_request_size",
			"throttle-rate": "throttle.rate", "throttle-burst": "throttle.burst", "throttle-in-flight": "throttle.max_in_flight", "queue-size": "worker.queue_size",
			"broker": "remote.broker", "group": "remote.group", "mqtt-version": "remote.mqtt_version", "client-id": "remote.client_id", "username": "remote.username",
			"ca-file": "remote.tls_ca_file", "cert-file": "remote.tls_cert_file", "key-file": "remote.tls_key_file", "tls-server-name": "remote.tls_server_name",
			"throttle": "remote.throttle", "worker-throttle": "remote.throttle", "concurrency": "remote.concurrency", "worker-concurrency": "remote.concurrency",
			"http-addr": "remote.http_addr", "cluster": "cluster.url", "model-repository": "models.repository", "models-dir": "models.dir", "model-threads": "models.threads", "chat-url": "models.chat.base_url", "chat-model": "models.chat.model",
		}},
		{ClientCmd, map[string]string{
			"prefix": "prefix", "broker": "remote.broker", "username": "remote.username", "password": "remote.password",
			"ca-file": "remote.tls_ca_file", "cert-file": "remote.tls_cert_file", "key-file": "remote.tls_key_file",
			"tls-server-name": "remote.tls_server_name",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.cmd.String(), func(t *testing.T) {
			got := map[string]string{}
			flagsOf(t, tt.cmd).VisitAll(func(f *pflag.Flag) {
				if f.Name != FlagConfig {
					got[f.Name] = flagKey(f)
				}
			})
			if !reflect.DeepEqual(got, tt.want) {
				for name, key := range got {
					if tt.want[name] != key {
						t.Errorf("--%s sets %q, want %q", name, key, tt.want[name])
					}
				}
				for name := range tt.want {
					if _, ok := got[name]; !ok {
						t.Errorf("--%s missing", name)
					}
				}
			}
		})
	}
}

// TestEnvNotOptions checks that the variables that are not options but are
// read (or reserved) are not reported as unknown.
func TestEnvNotOptions(t *testing.T) {
	for _, tt := range []struct {
		name string
		file string
		env  []string
	}{
		{name: "defaults", env: []string{EnvConfigFile, "MQTTINFER_CHAT_API_KEY", "MQTTINFER_REQUIRE_TESTDATA"}},
		{name: "a key variable of another name", file: "models:\n  chat:\n    api_key_env: MQTTINFER_OPENAI_KEY\n",
			env: []string{"MQTTINFER_OPENAI_KEY", "MQTTINFER_REQUIRE_TESTDATA"}},
		{name: "the key variable's name from the environment", env: []string{"MQTTINFER_MODELS_CHAT_API_KEY_ENV=MQTTINFER_KEY2", "MQTTINFER_KEY2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			isolate(t)
			t.Setenv(EnvConfigFile, writeFile(t, "c.yaml", tt.file+"\n"))
			for _, e := range tt.env {
				name, val, _ := strings.Cut(e, "=")
				if name != EnvConfigFile {
					t.Setenv(name, cmp.Or(val, "x"))
				}
			}
			if _, err := Load(nil); err != nil {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}
