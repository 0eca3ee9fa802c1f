// Package config is the single place where every mqttinfer option is defined,
// defaulted, validated and documented.
//
// The effective configuration is built by Load from, in rising precedence:
// the defaults (Default), a YAML file, MQTTINFER_* environment variables, and
// the command-line flags registered by BindFlags that were set. Validate
// checks the result; YAML renders it back in the file's own format. The
// option table in options.go is the one source of the flags, the environment
// variable names and REFERENCE.md.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/topics"
)

// Config is the whole configuration of an mqttinfer process. Field tags give
// the YAML keys; nested keys are joined with "." in messages and with "_" in
// environment variable names (mqtt.tcp_addr is MQTTINFER_MQTT_TCP_ADDR).
type Config struct {
	// Node is this process's node id, used in the status topic. Default: the
	// host name sanitised to [A-Za-z0-9._-], at most 64 bytes.
	Node string `mapstructure:"node" yaml:"node"`
	// Prefix is the topic prefix of the service. Default "mqttinfer".
	Prefix string `mapstructure:"prefix" yaml:"prefix"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `mapstructure:"log_level" yaml:"log_level"`
	// LogFormat is text or json. Default text.
	LogFormat string `mapstructure:"log_format" yaml:"log_format"`

	MQTT     MQTT     `mapstructure:"mqtt" yaml:"mqtt"`
	HTTP     HTTP     `mapstructure:"http" yaml:"http"`
	TLS      TLS      `mapstructure:"tls" yaml:"tls"`
	Auth     Auth     `mapstructure:"auth" yaml:"auth"`
	Storage  Storage  `mapstructure:"storage" yaml:"storage"`
	Throttle Throttle `mapstructure:"throttle" yaml:"throttle"`
	Worker   Worker   `mapstructure:"worker" yaml:"worker"`
	Remote   Remote   `mapstructure:"remote" yaml:"remote"`
	Cluster  Cluster  `mapstructure:"cluster" yaml:"cluster"`
	Models   Models   `mapstructure:"models" yaml:"models"`
}

// MQTT configures the embedded broker.
type MQTT struct {
	// TCPAddr is the MQTT-over-TCP listener (host:port); "" disables it.
	TCPAddr string `mapstructure:"tcp_addr" yaml:"tcp_addr"`
	// WSAddr is the MQTT-over-WebSocket listener (host:port); "" disables
	// it. With a certificate (tls.cert_file) it is WebSocket over TLS.
	WSAddr string `mapstructure:"ws_addr" yaml:"ws_addr"`
	// TLSAddr is the MQTT-over-TLS listener (host:port); "" disables it.
	// It needs tls.cert_file.
	TLSAddr string `mapstructure:"tls_addr" yaml:"tls_addr"`
	// MaxPacketSize is the largest MQTT packet the broker reads, in bytes.
	MaxPacketSize int `mapstructure:"max_packet_size" yaml:"max_packet_size"`
	// MaxRequestSize is the largest request payload, in bytes; larger
	// requests are answered 413. At most MaxPacketSize.
	MaxRequestSize int `mapstructure:"max_request_size" yaml:"max_request_size"`
	// MaxClientWritesPending is the per-client outbound queue length, in messages.
	MaxClientWritesPending int `mapstructure:"max_client_writes_pending" yaml:"max_client_writes_pending"`
	// MaxClients limits connected clients; 0 means unlimited.
	MaxClients int `mapstructure:"max_clients" yaml:"max_clients"`
	// SessionExpiry is the longest a disconnected persistent session is kept.
	SessionExpiry time.Duration `mapstructure:"session_expiry" yaml:"session_expiry"`
	// MaxKeepAlive caps the keep-alive of MQTT 5 clients (told in CONNACK).
	MaxKeepAlive time.Duration `mapstructure:"max_keepalive" yaml:"max_keepalive"`
}

// TLS configures the certificate of the embedded broker's TLS listeners
// and of HTTPS, and mutual TLS.
type TLS struct {
	// CertFile is the server's PEM certificate (chain); "" means no TLS.
	CertFile string `mapstructure:"cert_file" yaml:"cert_file"`
	// KeyFile is its PEM private key.
	KeyFile string `mapstructure:"key_file" yaml:"key_file"`
	// ClientCAFile, when set, is a PEM file of the CAs whose client
	// certificates the TLS listeners require (mutual TLS).
	ClientCAFile string `mapstructure:"client_ca_file" yaml:"client_ca_file"`
	// Identity is where a client certificate's identity comes from: "cn"
	// (the subject's common name) or "san" (the first DNS name, else the
	// first URI, of its subject alternative names).
	Identity string `mapstructure:"identity" yaml:"identity"`
}

// Storage configures what the embedded broker keeps across restarts.
type Storage struct {
	// Dir is the directory of the broker's store (sessions, subscriptions,
	// retained and queued QoS 1/2 messages) and of the journal of accepted
	// requests; "" keeps nothing across a restart.
	Dir string `mapstructure:"dir" yaml:"dir"`
}

// HTTP configures the HTTP gateway (/healthz, /readyz, /metrics, REST + SSE).
type HTTP struct {
	// Addr is the HTTP listener (host:port); "" disables it.
	Addr string `mapstructure:"addr" yaml:"addr"`
	// Pprof serves Go's profiler under /debug/pprof/ on the HTTP listener.
	Pprof bool `mapstructure:"pprof" yaml:"pprof"`
}

// Auth configures client authentication on the embedded broker.
type Auth struct {
	// Enabled requires every MQTT client to log in with a credential from
	// CredentialsFile. Off is the open development mode.
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// CredentialsFile is the path of the credentials file (see LoadCredentials).
	CredentialsFile string `mapstructure:"credentials_file" yaml:"credentials_file"`
}

// Throttle configures the per-device token buckets.
type Throttle struct {
	// Enabled turns throttling on in the embedded broker.
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// Rate is the refill rate of each device's bucket, in tokens per second.
	Rate float64 `mapstructure:"rate" yaml:"rate"`
	// Burst is the bucket size, in tokens.
	Burst int `mapstructure:"burst" yaml:"burst"`
	// MaxInFlight is how many requests of one device may be in progress at once.
	MaxInFlight int `mapstructure:"max_in_flight" yaml:"max_in_flight"`
	// IdleTTL is how long an unused device bucket is kept.
	IdleTTL time.Duration `mapstructure:"idle_ttl" yaml:"idle_ttl"`
	// Overrides set other limits for devices whose id matches a pattern;
	// the first matching override applies.
	Overrides []ThrottleOverride `mapstructure:"overrides" yaml:"overrides"`
}

// ThrottleOverride sets limits for the devices whose id matches Pattern.
// A zero Rate, Burst or MaxInFlight inherits the value from Throttle.
type ThrottleOverride struct {
	// Pattern is a path.Match glob on the device id, e.g. "cam-*".
	Pattern string `mapstructure:"pattern" yaml:"pattern"`
	// Rate in tokens per second; 0 inherits throttle.rate.
	Rate float64 `mapstructure:"rate" yaml:"rate"`
	// Burst in tokens; 0 inherits throttle.burst.
	Burst int `mapstructure:"burst" yaml:"burst"`
	// MaxInFlight in requests; 0 inherits throttle.max_in_flight.
	MaxInFlight int `mapstructure:"max_in_flight" yaml:"max_in_flight"`
	// Costs maps model name to tokens per request for these devices,
	// replacing models.costs and the model's own cost for the models listed.
	Costs map[string]int `mapstructure:"costs" yaml:"costs"`
}

// Worker configures the in-process worker pool of `mqttinfer serve`.
type Worker struct {
	// InProcess makes the embedded broker hand requests to an in-process pool.
	InProcess bool `mapstructure:"in_process" yaml:"in_process"`
	// Concurrency is the number of inferences run at once; 0 means
	// 2 × GOMAXPROCS (see PoolSize).
	Concurrency int `mapstructure:"concurrency" yaml:"concurrency"`
	// QueueSize is how many requests may wait for the pool; a full queue
	// answers 503 overloaded.
	QueueSize int `mapstructure:"queue_size" yaml:"queue_size"`
	// DefaultDeadline applies to requests that set no deadline_ms.
	DefaultDeadline time.Duration `mapstructure:"default_deadline" yaml:"default_deadline"`
	// MaxDeadline caps a request's deadline_ms.
	MaxDeadline time.Duration `mapstructure:"max_deadline" yaml:"max_deadline"`
}

// PoolSize is the effective number of concurrent inferences: Concurrency, or
// 2 × GOMAXPROCS when it is 0.
func (w Worker) PoolSize() int { return poolSize(w.Concurrency) }

// Remote configures `mqttinfer worker`, a worker that connects to any MQTT
// broker and takes requests through a shared subscription. Its connection
// settings (Broker, Username, Password, the TLS files) are also those of the
// client commands sim, watch, models and chat.
type Remote struct {
	// Broker is the broker URL, e.g. "tcp://127.0.0.1:1883" or
	// "unix:///run/mqtt.sock", or several, comma-separated (the nodes of a
	// clustered broker, the edges of an mqttinfer cluster): the worker and
	// the clients connect to the first that answers and move to the next
	// when they lose it. Load turns "host:port" into "tcp://host:port".
	Broker string `mapstructure:"broker" yaml:"broker"`
	// Group names the workers that share the devices between them.
	Group string `mapstructure:"group" yaml:"group"`
	// MQTTVersion is the protocol of the worker's connection: "5" or "3.1.1".
	MQTTVersion string `mapstructure:"mqtt_version" yaml:"mqtt_version"`
	// ClientID is the worker's MQTT client id; Load and Default fill in
	// "<prefix>-worker-<8 random hex digits>" when it is empty (the prefix
	// made into a valid id, the random part drawn once per process).
	ClientID string `mapstructure:"client_id" yaml:"client_id"`
	// Username for the broker, if it needs one.
	Username string `mapstructure:"username" yaml:"username"`
	// Password for the broker; YAML shows it as "***".
	Password string `mapstructure:"password" yaml:"password"`
	// TLSCAFile is a PEM file of the certificate authorities trusted to sign
	// the broker's certificate, instead of the system's; "" = the system's.
	TLSCAFile string `mapstructure:"tls_ca_file" yaml:"tls_ca_file"`
	// TLSCertFile is a PEM client certificate shown to the broker; it needs
	// TLSKeyFile.
	TLSCertFile string `mapstructure:"tls_cert_file" yaml:"tls_cert_file"`
	// TLSKeyFile is the PEM private key of TLSCertFile.
	TLSKeyFile string `mapstructure:"tls_key_file" yaml:"tls_key_file"`
	// TLSServerName is the name the broker's certificate must carry, when it
	// is not the host of Broker; "" = that host.
	TLSServerName string `mapstructure:"tls_server_name" yaml:"tls_server_name"`
	// Throttle enforces the throttle.* limits in the worker, for brokers
	// that do not run mqttinfer's broker hooks.
	Throttle bool `mapstructure:"throttle" yaml:"throttle"`
	// Concurrency is the number of inferences run at once; 0 means
	// 2 × GOMAXPROCS (see PoolSize).
	Concurrency int `mapstructure:"concurrency" yaml:"concurrency"`
	// DedupTTL is how long a request id is remembered so that a redelivered
	// request is answered from cache instead of being run again.
	DedupTTL time.Duration `mapstructure:"dedup_ttl" yaml:"dedup_ttl"`
	// HTTPAddr is the worker's HTTP listener for /metrics, /healthz and
	// /readyz (host:port); "" disables it.
	HTTPAddr string `mapstructure:"http_addr" yaml:"http_addr"`
}

// PoolSize is the effective number of concurrent inferences: Concurrency, or
// 2 × GOMAXPROCS when it is 0.
func (r Remote) PoolSize() int { return poolSize(r.Concurrency) }

// Cluster puts `mqttinfer serve` (an edge) and `mqttinfer worker` on a
// NATS JetStream backbone (see package cluster).
type Cluster struct {
	// URL lists the NATS servers, comma-separated (nats://host:4222,...);
	// "" runs outside a cluster.
	URL string `mapstructure:"url" yaml:"url"`
	// Partitions is how many partitions the devices are spread over; every
	// node of a service must use the same.
	Partitions int `mapstructure:"partitions" yaml:"partitions"`
	// Replicas is how many NATS servers keep each stream; 0 picks 3 on a
	// NATS cluster and 1 on a single server.
	Replicas int `mapstructure:"replicas" yaml:"replicas"`
	// ResultTTL is how long results are kept for devices that reconnect.
	ResultTTL time.Duration `mapstructure:"result_ttl" yaml:"result_ttl"`
	// DedupWindow is how long a request's id is remembered against copies.
	DedupWindow time.Duration `mapstructure:"dedup_window" yaml:"dedup_window"`
	// MaxQueued is how many requests may wait in the cluster at once.
	MaxQueued int `mapstructure:"max_queued" yaml:"max_queued"`
}

// Models configures the models.
type Models struct {
	// Costs maps model name to tokens per request, replacing the model's own cost.
	Costs map[string]int `mapstructure:"costs" yaml:"costs"`
	// Dir holds the ONNX Runtime library and the model files (`make models`).
	Dir string `mapstructure:"dir" yaml:"dir"`
	// Threads is the intra-op threads of each ONNX Runtime session.
	Threads int `mapstructure:"threads" yaml:"threads"`
	// Repository is a model repository of the users' own ONNX models
	// (<model>/model.yaml, <model>/<version>/model.onnx); "" for none.
	Repository string `mapstructure:"repository" yaml:"repository"`
	// RepositoryPoll is how often the repository is scanned for changes,
	// besides the change notifications.
	RepositoryPoll time.Duration `mapstructure:"repository_poll" yaml:"repository_poll"`
	// Anomaly configures the anomaly model.
	Anomaly Anomaly `mapstructure:"anomaly" yaml:"anomaly"`
	// VAD configures the voice activity model.
	VAD VAD `mapstructure:"vad" yaml:"vad"`
	// OCR configures the meter and display reading model.
	OCR OCR `mapstructure:"ocr" yaml:"ocr"`
	// Detect configures the object detection model.
	Detect Detect `mapstructure:"detect" yaml:"detect"`
	// Chat configures the LLM chat model (off unless BaseURL is set).
	Chat Chat `mapstructure:"chat" yaml:"chat"`
}

// Chat configures the LLM chat model: a client of an OpenAI-compatible
// Chat Completions server (Ollama, llama.cpp, vLLM, OpenAI).
type Chat struct {
	// BaseURL is the server's API root, e.g. http://127.0.0.1:11434/v1; "" switches chat off.
	BaseURL string `mapstructure:"base_url" yaml:"base_url"`
	// Model is the server's model name, e.g. llama3.2:1b.
	Model string `mapstructure:"model" yaml:"model"`
	// APIKeyEnv names the environment variable that holds the API key.
	APIKeyEnv string `mapstructure:"api_key_env" yaml:"api_key_env"`
	// Timeout bounds a whole chat request.
	Timeout time.Duration `mapstructure:"timeout" yaml:"timeout"`
	// IdleTimeout bounds the gap between two chunks of a stream.
	IdleTimeout time.Duration `mapstructure:"idle_timeout" yaml:"idle_timeout"`
	// MaxTokens is the default and the cap of a request's max_tokens.
	MaxTokens int `mapstructure:"max_tokens" yaml:"max_tokens"`
	// Cost is the throttle tokens charged up front for max_tokens.
	Cost int `mapstructure:"cost" yaml:"cost"`
}

// VAD configures the voice activity model (Silero VAD v5).
type VAD struct {
	// MaxStreams is the most device audio streams whose state is carried at once.
	MaxStreams int `mapstructure:"max_streams" yaml:"max_streams"`
	// IdleTTL is how long a device's audio stream state is kept without audio.
	IdleTTL time.Duration `mapstructure:"idle_ttl" yaml:"idle_ttl"`
	// MaxRequestSize is the largest vad request, in bytes.
	MaxRequestSize int `mapstructure:"max_request_size" yaml:"max_request_size"`
}

// OCR configures the meter and display reading model (PP-OCRv4).
type OCR struct {
	// MaxPixels is the largest image accepted, in pixels, checked before decoding.
	MaxPixels int `mapstructure:"max_pixels" yaml:"max_pixels"`
	// MaxRequestSize is the largest ocr request, in bytes.
	MaxRequestSize int `mapstructure:"max_request_size" yaml:"max_request_size"`
}

// Detect configures the object detection model (NanoDet-m, COCO).
type Detect struct {
	// MaxPixels is the largest image accepted, in pixels, checked before decoding.
	MaxPixels int `mapstructure:"max_pixels" yaml:"max_pixels"`
	// MaxRequestSize is the largest detect request, in bytes.
	MaxRequestSize int `mapstructure:"max_request_size" yaml:"max_request_size"`
	// MaxBatch is the most images run together in one batch; 1 switches batching off.
	MaxBatch int `mapstructure:"max_batch" yaml:"max_batch"`
	// MaxDelay is the longest a request waits for others to fill its batch.
	MaxDelay time.Duration `mapstructure:"max_delay" yaml:"max_delay"`
}

// Anomaly configures the streaming anomaly-detection model.
type Anomaly struct {
	// MaxSeries is the most (device, sensor) series tracked at once.
	MaxSeries int `mapstructure:"max_series" yaml:"max_series"`
	// IdleTTL is how long a series without samples is kept.
	IdleTTL time.Duration `mapstructure:"idle_ttl" yaml:"idle_ttl"`
}

// Default returns the built-in defaults. They validate (with any model list).
func Default() Config { return DefaultFor(ServeCmd) }

// DefaultFor returns the built-in defaults of a command: those of Default,
// except that a worker's node id has a random part (so that several
// workers on one host stay apart in their group).
func DefaultFor(cmd Command) Config {
	c := defaultsFor(cmd)
	c.resolve()
	return c
}

// defaultsFor are the defaults of cmd as Load layers them.
func defaultsFor(cmd Command) Config {
	c := defaults()
	if cmd == WorkerCmd {
		c.Node = workerNode(c.Node, instance())
	}
	return c
}

// defaults are the defaults as Load layers them: derived values (the remote
// client id) are left empty so that they follow a prefix set later.
func defaults() Config {
	return Config{
		Node:      hostNode(),
		Prefix:    topics.DefaultPrefix,
		LogLevel:  "info",
		LogFormat: "text",
		MQTT: MQTT{
			TCPAddr:                "127.0.0.1:1883",
			WSAddr:                 "127.0.0.1:1882",
			MaxPacketSize:          4 << 20,
			MaxRequestSize:         64 << 10,
			MaxClientWritesPending: 256,
			MaxClients:             0,
			SessionExpiry:          time.Hour,
			MaxKeepAlive:           time.Minute,
		},
		HTTP: HTTP{Addr: "127.0.0.1:8080"},
		TLS:  TLS{Identity: "cn"},
		Auth: Auth{Enabled: false},
		Throttle: Throttle{
			Enabled:     true,
			Rate:        5,
			Burst:       10,
			MaxInFlight: 4,
			IdleTTL:     10 * time.Minute,
		},
		Worker: Worker{
			InProcess:       true,
			Concurrency:     0,
			QueueSize:       1024,
			DefaultDeadline: 5 * time.Second,
			MaxDeadline:     60 * time.Second,
		},
		Remote: Remote{
			Broker:      "tcp://127.0.0.1:1883",
			Group:       "mqttinfer",
			MQTTVersion: "5",
			DedupTTL:    2 * time.Minute,
		},
		Cluster: Cluster{
			Partitions:  32,
			ResultTTL:   10 * time.Minute,
			DedupWindow: 2 * time.Minute,
			MaxQueued:   4096,
		},
		Models: Models{
			Dir:            ".cache/models",
			Threads:        1,
			RepositoryPoll: 5 * time.Second,
			Anomaly:        Anomaly{MaxSeries: 100000, IdleTTL: time.Hour},
			VAD:            VAD{MaxStreams: 10000, IdleTTL: 5 * time.Minute, MaxRequestSize: 512 << 10},
			OCR:            OCR{MaxPixels: 4_000_000, MaxRequestSize: 2 << 20},
			Detect:         Detect{MaxPixels: 4_000_000, MaxRequestSize: 2 << 20, MaxBatch: 1, MaxDelay: 2 * time.Millisecond},
			Chat: Chat{APIKeyEnv: "MQTTINFER_CHAT_API_KEY", Timeout: 2 * time.Minute, IdleTimeout: 30 * time.Second,
				MaxTokens: 512, Cost: 8},
		},
	}
}

// resolve fills in values derived from others and normalises empty
// collections to nil, so that equal configurations compare equal.
func (c *Config) resolve() {
	if c.Remote.ClientID == "" {
		c.Remote.ClientID = workerClientID(c.Prefix, instance())
	}
	c.Remote.Broker = normalizeBrokers(c.Remote.Broker)
	if len(c.Models.Costs) == 0 {
		c.Models.Costs = nil
	}
	if len(c.Throttle.Overrides) == 0 {
		c.Throttle.Overrides = nil
	}
	for i := range c.Throttle.Overrides {
		if len(c.Throttle.Overrides[i].Costs) == 0 {
			c.Throttle.Overrides[i].Costs = nil
		}
	}
}

// normalizeBrokers turns each "host:port" of a comma-separated list of
// broker URLs into "tcp://host:port".
func normalizeBrokers(list string) string {
	urls := splitURLs(list)
	for i, u := range urls {
		if !strings.Contains(u, "://") {
			urls[i] = "tcp://" + u
		}
	}
	return strings.Join(urls, ",")
}

// Brokers lists the broker URLs of Broker, in order.
func (r Remote) Brokers() []string { return splitURLs(r.Broker) }

// Logger returns a slog.Logger writing to w with the configured level and
// format. Values Validate would reject fall back to info and text.
func (c Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevels[c.LogLevel]}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

func poolSize(n int) int {
	if n > 0 {
		return n
	}
	return 2 * runtime.GOMAXPROCS(0)
}

// hostNode is the default node id: the host name made into a valid id.
func hostNode() string {
	h, err := os.Hostname()
	if err != nil {
		h = ""
	}
	return sanitizeID(h)
}

// sanitizeID turns s into a valid topics id: characters outside
// [A-Za-z0-9._-] become '-', and the result is cut to topics.MaxIDLen bytes.
// An empty result becomes "mqttinfer".
func sanitizeID(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return topics.DefaultPrefix
	}
	return clip(string(b), topics.MaxIDLen)
}

// instance is this process's random part of derived client ids: 8 hex
// digits drawn once, so that Load and Default agree within one process and
// two processes on one broker do not.
var instance = sync.OnceValue(func() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
})

// workerNode is a worker's default node id: the host's, and random.
func workerNode(host, random string) string {
	return clip(host, topics.MaxIDLen-len(random)-1) + "-" + random
}

// workerClientID is the default client id of `mqttinfer worker`:
// "<prefix>-worker-<random>", with the prefix's characters outside
// [A-Za-z0-9._-] ('/' included) made '-' and the prefix cut so that the
// whole id fits in topics.MaxIDLen bytes with random kept whole at the end.
// Deriving it from the prefix keeps the workers of two services that share a
// broker (a public demo broker) apart; random keeps two workers of one
// service apart.
func workerClientID(prefix, random string) string {
	suffix := topics.WorkerIDMark + random
	return clip(sanitizeID(prefix), max(topics.MaxIDLen-len(suffix), 1)) + suffix
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
