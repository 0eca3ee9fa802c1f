package config

import (
	"reflect"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// EnvPrefix starts the name of every environment variable Load reads.
const EnvPrefix = "MQTTINFER"

// EnvConfigFile names the environment variable that can give the config file
// path when the --config flag is not set.
const EnvConfigFile = EnvPrefix + "_CONFIG"

// FlagConfig is the name of the flag that gives the config file path.
const FlagConfig = "config"

// DefaultFile is the config file Load reads when no path is given and it exists.
const DefaultFile = "mqttinfer.yaml"

// envVar is an environment variable that is not an option.
type envVar struct {
	name string
	doc  string // for REFERENCE.md
}

// otherEnv lists the MQTTINFER_* variables that are not options, the only
// ones Load does not report as unknown besides the options' own. apiKeyEnv
// is the effective models.chat.api_key_env.
func otherEnv(apiKeyEnv string) []envVar {
	return []envVar{
		{EnvConfigFile, "Path of the config file, when `--config` is not given."},
		{apiKeyEnv, "The chat server's API key, under its default name. Exempt is whichever variable `models.chat.api_key_env` names; when that is another name, this one is reported as unknown."},
		{EnvPrefix + "_REQUIRE_TESTDATA", "Reserved for the test suite (`make test` exports it): tests that need Debian packages or model files fail instead of skipping. mqttinfer itself does not read it."},
	}
}

// Command is a set of mqttinfer commands, as far as flags go: each option
// says which commands have a flag for it, and BindFlags registers the flags
// of one command. A command has a flag only for the options it uses, so a
// flag that would do nothing there is an "unknown flag" error.
type Command uint8

// The commands that take configuration flags.
const (
	// ServeCmd is `mqttinfer serve`: the embedded broker, the in-process
	// workers and the HTTP gateway.
	ServeCmd Command = 1 << iota
	// WorkerCmd is `mqttinfer worker`, a remote worker on any MQTT broker.
	WorkerCmd
	// ClientCmd is the client commands `sim`, `watch`, `models` and `chat`:
	// they take the connection settings (broker, prefix, login, TLS) only.
	ClientCmd
)

// commandNames names the bits of Command, in the order String lists them.
var commandNames = []struct {
	cmd  Command
	name string
}{{ServeCmd, "serve"}, {WorkerCmd, "worker"}, {ClientCmd, "clients"}}

// String lists the commands of c: "serve", "worker, clients".
func (c Command) String() string {
	var names []string
	for _, n := range commandNames {
		if c&n.cmd != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ", ")
}

// option documents one configuration key. The table below is the only list of
// options: flags, environment names and REFERENCE.md are derived from it, and
// a test checks that it covers every field of Config.
type option struct {
	key string // dotted YAML key
	// flag is the command-line flag, "" for none, on the commands in on. One
	// flag name may set different keys on different commands (--throttle is
	// throttle.enabled on serve and remote.throttle on worker), never two
	// keys on one command.
	flag string
	on   Command
	// alias is a second name of the flag, kept for scripts, "" for none.
	alias string
	// usage is the flag's help text
	usage string
	unit  string // unit of the value, shown after the default
	def   string // default shown in docs when it is not the literal value
	doc   string // meaning, for REFERENCE.md
}

// Shorthands for the table.
const (
	serve   = ServeCmd
	worker  = WorkerCmd
	clients = ClientCmd
)

var options = []option{
	{key: "node", flag: "node", on: serve | worker, usage: "node id, used in the status topic (worker: unique in its group)", def: "host name, sanitised (worker: and `-<random>`)",
		doc: "Node id of this process, used in the status topic `<prefix>/<ver>/status/<node>`; for `mqttinfer worker` also its identity in its group, which must be unique there (a worker that finds its node id taken by a live worker of its group exits). 1–64 bytes of `[A-Za-z0-9._-]`; by default the host name with other characters replaced by `-`, and for `mqttinfer worker` followed by `-` and 8 random hex digits drawn at start, so that several workers on one host stay apart."},
	{key: "prefix", flag: "prefix", on: serve | worker | clients, usage: "topic prefix of the service",
		doc: "Topic prefix of the service. On a shared broker (a public demo broker) use a random, private one."},
	{key: "log_level", flag: "log-level", on: serve | worker, usage: "log level: debug, info, warn or error",
		doc: "Log level: `debug`, `info`, `warn` or `error`."},
	{key: "log_format", flag: "log-format", on: serve | worker, usage: "log format: text or json",
		doc: "Log format: `text` or `json` (log/slog handlers)."},

	{key: "mqtt.tcp_addr", flag: "mqtt-addr", on: serve, usage: "MQTT over TCP listen address, host:port (\"\" disables)",
		doc: "MQTT over TCP listener of the embedded broker, `host:port`. Empty disables it; port 0 picks a free port."},
	{key: "mqtt.ws_addr", flag: "ws-addr", on: serve, usage: "MQTT over WebSocket listen address, host:port (\"\" disables)",
		doc: "MQTT over WebSocket listener of the embedded broker, `host:port`. Empty disables it."},
	{key: "mqtt.tls_addr", flag: "mqtt-tls-addr", on: serve, usage: "MQTT over TLS listen address, host:port (needs --tls-cert; \"\" disables)",
		doc: "MQTT over TLS listener of the embedded broker, `host:port`, conventionally port 8883. Needs `tls.cert_file`. Empty disables it."},
	{key: "mqtt.max_packet_size", flag: "max-packet-size", on: serve, usage: "largest MQTT packet the broker reads, in bytes", unit: "bytes",
		doc: "Largest MQTT packet the broker reads; MQTT 5 clients learn it in CONNACK (Maximum Packet Size). A bigger packet closes the connection. Keep it above every request size limit (`mqtt.max_request_size` and the models' `max_request_size`) so that an oversized request can still be read and answered 413. At most 268435455."},
	{key: "mqtt.max_request_size", flag: "max-request-size", on: serve | worker, usage: "largest request payload of models without a limit of their own, in bytes (bigger ones are answered 413)", unit: "bytes",
		doc: "Largest request payload for the models without a limit of their own (`anomaly`, `chat`), in the embedded broker, the HTTP gateway and `mqttinfer worker`; `vad`, `ocr` and `detect` have `models.<name>.max_request_size`. A bigger request is answered 413 `payload_too_large`. The catalog states each model's limit (`max_request_bytes`). At most `mqtt.max_packet_size`."},
	{key: "mqtt.max_client_writes_pending", unit: "messages",
		doc: "Outbound queue per client. When a slow client's queue is full, further messages to it are dropped and counted. Each slot costs memory per connected client."},
	{key: "mqtt.max_clients", flag: "max-clients", on: serve, usage: "most connected MQTT clients (0 = unlimited)", unit: "clients", def: "`0` (unlimited)",
		doc: "Most clients connected at once; 0 means unlimited. Past it a client's CONNACK says server unavailable."},
	{key: "mqtt.session_expiry", unit: "duration",
		doc: "Longest time a disconnected persistent session (its subscriptions and queued QoS 1/2 messages) is kept. Clients that ask for longer get this. At least 1s."},

	{key: "mqtt.max_keepalive", unit: "duration",
		doc: "Longest keep-alive an MQTT 5 client may use: one that asks for more, or for none, is told this one in CONNACK (Server Keep Alive) and held to it, so that a vanished device is noticed within 1.5 times it. MQTT 3.1.1 clients cannot be told and keep theirs. 0 means no cap. At most 18h12m15s (65535 s)."},
	{key: "http.addr", flag: "http-addr", on: serve, usage: "HTTP listen address for the gateway, /healthz, /readyz and /metrics (\"\" disables)",
		doc: "HTTP listener of `mqttinfer serve`: REST + SSE gateway, `/healthz`, `/readyz`, `/metrics`, `host:port`. Empty disables it."},
	{key: "http.pprof", flag: "pprof", on: serve, usage: "serve Go's profiler under /debug/pprof/",
		doc: "Serve Go's profiler (`net/http/pprof`) under `/debug/pprof/` on the HTTP listener, to profile a running node (`go tool pprof http://127.0.0.1:8080/debug/pprof/profile`). Off by default: it exposes internals, so keep the listener private when it is on."},

	{key: "tls.cert_file", flag: "tls-cert", on: serve, usage: "PEM server certificate: enables MQTT over TLS (mqtt.tls_addr), WebSocket over TLS and HTTPS", unit: "path",
		doc: "PEM certificate (chain) of the embedded broker and the HTTP gateway. With it, `mqtt.tls_addr` serves MQTT over TLS, `mqtt.ws_addr` serves WebSocket over TLS (`wss://`) and `http.addr` serves HTTPS; `mqtt.tcp_addr` stays plain MQTT (empty it to allow TLS only). The certificate and key are read again when their files change, without a restart; connections made before keep theirs. Needs `tls.key_file`."},
	{key: "tls.key_file", flag: "tls-key", on: serve, usage: "PEM private key of --tls-cert", unit: "path",
		doc: "PEM private key of `tls.cert_file`. Keep it readable only by the user that runs mqttinfer."},
	{key: "tls.client_ca_file", flag: "tls-client-ca", on: serve, usage: "PEM CAs whose client certificates the TLS listeners require (mutual TLS)", unit: "path",
		doc: "PEM file of the certificate authorities of client certificates. With it, the MQTT over TLS and WebSocket over TLS listeners require a client certificate signed by one of them (mutual TLS), and a device's identity comes from its certificate (`tls.identity`): it publishes requests under that id, and with `auth.enabled` it must be a user of the credentials file (its role applies; no password is needed). Read again when the file changes. Empty: no client certificates."},
	{key: "tls.identity",
		doc: "Where a client certificate's identity comes from: `cn`, the subject's common name, or `san`, the first DNS name of its subject alternative names (else the first URI). It must be a valid id (1–64 of `[A-Za-z0-9._-]`); a certificate without one is refused at connection."},
	{key: "storage.dir", flag: "storage-dir", on: serve, usage: "directory where the broker keeps sessions, retained messages and queued messages, and the journal of accepted requests (\"\" keeps nothing)", unit: "path",
		doc: "Directory of the embedded broker's store (Pebble): persistent sessions, subscriptions, retained messages and queued QoS 1/2 messages survive a restart, and requests accepted for the in-process workers are journaled until answered, so that a crash loses none: after a restart they are run and answered (a request whose deadline passed meanwhile is answered 408). Empty keeps nothing across a restart. One process per directory."},
	{key: "auth.enabled", flag: "auth", on: serve, usage: "require logins from the credentials file on MQTT and HTTP",
		doc: "Require every MQTT client and every HTTP request (but `/healthz` and `/readyz`) to log in as a user of `auth.credentials_file`: a password (HTTP Basic over HTTP), a Bearer API key over HTTP, or a client certificate (`tls.client_ca_file`); roles decide what it may publish, subscribe and call. Off is the open development mode: any client id connects and may watch results, and an HTTP client is its address."},
	{key: "auth.credentials_file", flag: "credentials", on: serve, usage: "credentials file (YAML) used with --auth", unit: "path",
		doc: "Credentials file (see below); required when `auth.enabled`. A relative path is relative to the working directory."},

	{key: "throttle.enabled", flag: "throttle", on: serve, usage: "throttle each device in the embedded broker",
		doc: "Throttle each device in the embedded broker with a token bucket and an in-flight limit. Rejected requests are answered 429 with `retry_after_ms` and never reach a worker."},
	{key: "throttle.rate", flag: "throttle-rate", on: serve | worker, usage: "tokens per second added to each device's bucket", unit: "tokens/s",
		doc: "Tokens added to each device's bucket per second. A request costs its model's cost in tokens."},
	{key: "throttle.burst", flag: "throttle-burst", on: serve | worker, usage: "size of each device's token bucket, in tokens", unit: "tokens",
		doc: "Size of each device's bucket: the most tokens a device can spend at once. Must be at least every cost set in `models.costs`."},
	{key: "throttle.max_in_flight", flag: "throttle-in-flight", on: serve | worker, usage: "requests of one device in progress at once", unit: "requests",
		doc: "Requests of one device in progress at once; more are answered 429."},
	{key: "throttle.idle_ttl", unit: "duration",
		doc: "A device's bucket is forgotten after this long without a request (the device starts again with a full bucket)."},
	{key: "throttle.overrides", def: "none",
		doc: "Other limits for devices whose id matches a pattern; the first match applies. A list of `{pattern, rate, burst, max_in_flight, costs}`: `pattern` is a `path.Match` glob on the device id (`cam-*`); a zero `rate`, `burst` or `max_in_flight` inherits the `throttle.*` value; `costs` (model → tokens) replaces `models.costs` for those devices."},

	{key: "worker.in_process", flag: "in-process", on: serve, usage: "run the in-process worker pool",
		doc: "Serve requests from a worker pool inside `mqttinfer serve`. Off: only remote workers (`mqttinfer worker`) answer."},
	{key: "worker.concurrency", flag: "concurrency", on: serve, usage: "inferences the in-process pool runs at once (0 = 2 x GOMAXPROCS)", unit: "inferences", def: "`0` (= 2 × GOMAXPROCS)",
		doc: "Inferences the in-process pool of `mqttinfer serve` runs at once; 0 means 2 × GOMAXPROCS."},
	{key: "worker.queue_size", flag: "queue-size", on: serve | worker, usage: "requests that may wait for a model (then 503 overloaded)", unit: "requests",
		doc: "Requests waiting for a model: in the in-process pool of `mqttinfer serve`, and in `mqttinfer worker`. When it is full, new requests are answered 503 `overloaded`."},
	{key: "worker.default_deadline", unit: "duration",
		doc: "Deadline of a request that sets no `deadline_ms`. A request that waited longer is answered 408."},
	{key: "worker.max_deadline", unit: "duration",
		doc: "Cap on a request's `deadline_ms`. At least `worker.default_deadline`."},

	{key: "remote.broker", flag: "broker", on: worker | clients, usage: "broker URL: tcp://, ssl://, ws://, wss://, unix:///path ... (host:port = tcp://host:port); several, comma-separated, to fail over", unit: "URLs",
		doc: "Broker that `mqttinfer worker` and the client commands connect to: `tcp://`, `mqtt://`, `ssl://`, `tls://`, `mqtts://`, `ws://`, `wss://` or `unix:///path/to/socket`. `host:port` is short for `tcp://host:port`. Several, comma-separated (the edges of an mqttinfer cluster, the nodes of a clustered broker): they connect to the first that answers and, when they lose it, to the next (`sim`'s devices go on where they were, `watch` goes on watching)."},
	{key: "remote.group", flag: "group", on: worker, usage: "group of workers that share the devices",
		doc: "Group of `mqttinfer worker`s that share the devices: each device is served by one live worker of the group at a time (its throttle bucket, in-flight count, model state and request order stay exact), and its requests move to another within moments when that worker leaves or dies. The workers of a group find each other through their retained status. A valid id."},
	{key: "remote.mqtt_version", flag: "mqtt-version", on: worker, usage: "MQTT version of the worker's connection: 5 or 3.1.1",
		doc: "MQTT version `mqttinfer worker` speaks to its broker: `5`, or `3.1.1` for brokers without MQTT 5. Over 3.1.1 the worker sees no MQTT 5 properties: requests' response topics, correlation data and CBOR content type are lost (replies go to the device's result topic, in JSON), and it gets its own replies back (no no-local subscriptions)."},
	{key: "remote.client_id", flag: "client-id", on: worker, usage: "MQTT client id of the worker (default <prefix>-worker-<random>)", def: "`<prefix>-worker-<random>`",
		doc: "MQTT client id of `mqttinfer worker`. A valid id. By default the prefix (characters outside `[A-Za-z0-9._-]`, `/` included, made `-`), `-worker-` and 8 random hex digits drawn at start, cut to 64 bytes at the prefix: two workers never share an id, and the workers of two services on one broker are told apart by their prefix."},
	{key: "remote.username", flag: "username", on: worker | clients, usage: "broker username (password: $MQTTINFER_REMOTE_PASSWORD)",
		doc: "Username for the broker of `mqttinfer worker` and the client commands."},
	{key: "remote.password", flag: "password", on: clients, usage: "broker password (better: $MQTTINFER_REMOTE_PASSWORD, which the process list does not show)",
		doc: "Password for the broker of `mqttinfer worker` and the client commands. Only the client commands have a flag for it, and a flag shows in the process list: prefer the file or the environment. Printed as `***`."},
	{key: "remote.tls_ca_file", flag: "ca-file", on: worker | clients, usage: "PEM file of the CAs that sign the broker's certificate (default: the system's)", unit: "path",
		doc: "PEM file of the certificate authorities trusted to sign the broker's certificate, for a broker with a private CA; they replace the system's. Empty: the system's roots. A relative path is relative to the working directory. The `remote.tls_*` options need a broker URL that uses TLS (`ssl://`, `tls://`, `mqtts://`, `wss://`); with another they are an error. The files are checked at start: a missing file, a file without a PEM certificate, or a key that does not match its certificate is an error naming the option and the file."},
	{key: "remote.tls_cert_file", flag: "cert-file", on: worker | clients, usage: "PEM client certificate for the broker (with --key-file)", unit: "path",
		doc: "PEM client certificate shown to a broker that asks for one (mutual TLS). Set together with `remote.tls_key_file`."},
	{key: "remote.tls_key_file", flag: "key-file", on: worker | clients, usage: "PEM private key of --cert-file", unit: "path",
		doc: "PEM private key of `remote.tls_cert_file`. Keep it readable only by the user that runs mqttinfer."},
	{key: "remote.tls_server_name", flag: "tls-server-name", on: worker | clients, usage: "name the broker's certificate must carry (default: the broker URL's host)",
		doc: "Name the broker's certificate must carry, when it is not the host of `remote.broker` (a broker reached by IP address or through a tunnel). Empty: that host."},
	{key: "remote.throttle", flag: "throttle", on: worker, alias: "worker-throttle", usage: "throttle each device in the worker with the --throttle-* limits (for brokers without mqttinfer's hooks)",
		doc: "Throttle in `mqttinfer worker` with the `throttle.*` limits, for brokers that do not run mqttinfer's hooks (Mosquitto, EMQX, HiveMQ)."},
	{key: "remote.concurrency", flag: "concurrency", on: worker, alias: "worker-concurrency", usage: "inferences the worker runs at once (0 = 2 x GOMAXPROCS)", unit: "inferences", def: "`0` (= 2 × GOMAXPROCS)",
		doc: "Inferences `mqttinfer worker` runs at once; 0 means 2 × GOMAXPROCS."},
	{key: "remote.dedup_ttl", unit: "duration",
		doc: "A request id seen again within this time (a QoS 1 redelivery) is answered from cache instead of being run again."},
	{key: "remote.http_addr", flag: "http-addr", on: worker, usage: "HTTP listen address for /metrics, /healthz and /readyz, host:port (\"\" disables)", def: "empty (off)",
		doc: "The worker's HTTP listener for `/metrics`, `/healthz` and `/readyz`, `host:port`. Empty disables it."},

	{key: "cluster.url", flag: "cluster", on: serve | worker, usage: "NATS servers of the cluster, comma-separated (nats://host:4222,...; \"\" = no cluster)", unit: "URLs", def: "empty (no cluster)",
		doc: "NATS servers (with JetStream) of the cluster this node belongs to, comma-separated: `nats://10.0.0.1:4222,nats://10.0.0.2:4222`; credentials go in the URL (`nats://user:pass@host:4222`) and `tls://` connects with TLS. `mqttinfer serve` becomes an edge: its broker stays the device door (identity, validation, throttle, MQTT 5) and puts each accepted request into the replicated request stream before it PUBACKs it; results come back through the result stream to every edge. `mqttinfer worker` takes its share of the partitions from the request stream instead of an MQTT broker. Empty: no cluster. See the README's Cluster section."},
	{key: "cluster.partitions", unit: "partitions",
		doc: "Partitions the devices are spread over (a hash of the device id): one worker owns a partition at a time, so this is also the most workers that share the load. Every edge and worker of a service must use the same; the streams remember it and a node with another refuses to start."},
	{key: "cluster.replicas", unit: "servers", def: "`0` (3 on a NATS cluster, 1 on one server)",
		doc: "NATS servers that keep a copy of each stream (1, 3 or 5). With 3, a request the edge has PUBACKed survives the loss of any one server."},
	{key: "cluster.result_ttl", unit: "duration",
		doc: "How long results are kept in the result stream: a device that reconnects (to any edge) within it gets the results it missed."},
	{key: "cluster.dedup_window", unit: "duration",
		doc: "A request with the same device, model and id as one taken within this time is a copy (a QoS 1 publish repeated after an edge died) and is not run again; also the window in which a result stored twice is kept once."},
	{key: "cluster.max_queued", unit: "requests",
		doc: "Requests that may wait in the cluster's request stream at once. Past it, edges answer new requests 503 `overloaded` at once, rather than let them wait past their deadlines: keep it below what the workers run in a request's deadline."},

	{key: "models.costs", def: "none",
		doc: "Tokens per request by model name (`{anomaly: 1, chat: 20}`), replacing the model's own cost."},
	{key: "models.dir", flag: "models-dir", on: serve | worker, usage: "directory of the ONNX Runtime library and model files", unit: "path",
		doc: "Directory with the ONNX Runtime library and the model files that `make models` fetches (checksums in `models.lock`). A relative path is relative to the working directory. When the runtime or a file is missing, the service still starts and the catalog marks the ONNX models unavailable, with the reason."},
	{key: "models.threads", flag: "model-threads", on: serve | worker, usage: "intra-op threads per ONNX Runtime session", unit: "threads",
		doc: "Intra-op threads of each ONNX Runtime session. 1 is best when the worker pool runs many requests at once; more helps single large requests."},
	{key: "models.repository", flag: "model-repository", on: serve | worker, usage: "directory of your own ONNX models: <model>/model.yaml, <model>/<version>/model.onnx (\"\" = none)", unit: "path", def: "empty (none)",
		doc: "A model repository: your own ONNX models, each in `<model>/model.yaml` (its tensors, optional postprocessing and labels, version policy, cost) with one directory per version, `<model>/<version>/model.onnx`. Every model is served under its directory's name in the tensor contract of the Open Inference Protocol; versions serve side by side, and a new, changed or removed version is picked up while the service runs, without dropping a request. See the README's \"Your own models\". Every node of a cluster (edges and workers) needs the same repository."},
	{key: "models.repository_poll", unit: "duration",
		doc: "How often the model repository is scanned for changes, besides the file system's change notifications (which some mounts lack)."},
	{key: "models.anomaly.max_series", unit: "series",
		doc: "Most (device, sensor) series the anomaly model tracks; beyond it the least recently used series is dropped."},
	{key: "models.anomaly.idle_ttl", unit: "duration",
		doc: "An anomaly series without a sample for this long is forgotten."},

	{key: "models.vad.max_streams", unit: "streams",
		doc: "Most device audio streams whose recurrent state and context the vad model carries; beyond it the least recently used stream is dropped."},
	{key: "models.vad.max_request_size", unit: "bytes", def: "`524288` bytes (512 KiB)",
		doc: "Largest vad request: 10 s of 16 kHz pcm16 audio in base64 JSON (427 KB), or 16 s in CBOR on v2. A bigger one is answered 413."},
	{key: "models.vad.idle_ttl", unit: "duration",
		doc: "A device's audio stream state is forgotten after this long without audio (the next chunk starts a new stream)."},
	{key: "models.ocr.max_request_size", unit: "bytes", def: "`2097152` bytes (2 MiB)",
		doc: "Largest ocr request: a 1080p JPEG or PNG display photo in base64 JSON fits. A bigger one is answered 413."},
	{key: "models.ocr.max_pixels", unit: "pixels",
		doc: "Largest image the ocr model accepts, checked from the image header before decoding; larger images are answered 422."},
	{key: "models.detect.max_request_size", unit: "bytes", def: "`2097152` bytes (2 MiB)",
		doc: "Largest detect request: a VGA, 720p or 1080p JPEG camera frame in base64 JSON fits (a 720p frame at quality 85 is about 150–250 KB). A bigger one is answered 413."},
	{key: "models.detect.max_pixels", unit: "pixels",
		doc: "Largest image the detect model accepts, checked from the image header before decoding; larger images are answered 422."},
	{key: "models.detect.max_batch", unit: "images",
		doc: "Most images the detect model runs in one batch (dynamic batching); 1, the default, switches batching off. On a CPU it saves no work: NanoDet's CPU time per image is flat from a batch of 1 to 4 (31 ms on one thread) and higher at 8 (42 ms), at most 10 % lower on two threads, so a request would only wait for the others (batching on measured 0.82–1.15× the throughput of off on 2 cores). Set 4–8 where a batch costs little more than one image: an accelerator (GPU, NPU) behind ONNX Runtime."},
	{key: "models.detect.max_delay", unit: "duration",
		doc: "Longest a detect request waits for others to fill its batch."},

	{key: "models.chat.base_url", flag: "chat-url", on: serve | worker, usage: "OpenAI-compatible chat server API root (\"\" = chat off)", unit: "URL", def: "`\"\"` (off)",
		doc: "API root of an OpenAI-compatible Chat Completions server: `http://127.0.0.1:11434/v1` (Ollama), `http://127.0.0.1:8080/v1` (llama.cpp's llama-server), `http://127.0.0.1:8000/v1` (vLLM), `https://api.openai.com/v1`. Empty switches the chat model off (the catalog lists it unavailable)."},
	{key: "models.chat.model", flag: "chat-model", on: serve | worker, usage: "model name on the chat server",
		doc: "Model name on the chat server, e.g. `llama3.2:1b` (Ollama) or `gpt-4o-mini`. Required when `models.chat.base_url` is set."},
	{key: "models.chat.api_key_env",
		doc: "Name of the environment variable that holds the chat server's API key (sent as `Authorization: Bearer`). The key itself is never in the configuration, the logs or the catalog; an unset variable sends no key (Ollama, llama.cpp)."},
	{key: "models.chat.timeout", unit: "duration",
		doc: "Longest a whole chat request may take; past it the stream ends with an `error` event (503)."},
	{key: "models.chat.idle_timeout", unit: "duration",
		doc: "Longest gap between two chunks of a chat stream (keep-alive comments count); past it the stream ends with an `error` event."},
	{key: "models.chat.max_tokens", unit: "tokens",
		doc: "Default and cap of a chat request's `max_tokens`."},
	{key: "models.chat.cost", unit: "tokens",
		doc: "Throttle tokens a chat request is charged up front, for its `max_tokens`; when it ends the device gets back the share it did not use (completion tokens / `max_tokens`). At most `throttle.burst`."},
}

// envName is the environment variable of a dotted key.
func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// leaf is one settable key of Config and the type of its field.
type leaf struct {
	key string
	typ reflect.Type
}

var durationType = reflect.TypeFor[time.Duration]()

// leaves lists every key of Config in field order. Structs (other than
// durations) are sections; everything else, maps and lists included, is a leaf.
func leaves() []leaf {
	var out []leaf
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for f := range t.Fields() {
			k := prefix + f.Tag.Get("mapstructure")
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, k+".")
				continue
			}
			out = append(out, leaf{key: k, typ: f.Type})
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return out
}

// sections lists the dotted keys of the nested structs ("mqtt", "models.anomaly").
func sections() map[string]bool {
	out := map[string]bool{}
	for _, l := range leaves() {
		parts := strings.Split(l.key, ".")
		for i := 1; i < len(parts); i++ {
			out[strings.Join(parts[:i], ".")] = true
		}
	}
	return out
}

// field returns the field of c (addressable) that holds key.
func field(c *Config, key string) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	for _, part := range strings.Split(key, ".") {
		t := v.Type()
		found := false
		for i := range t.NumField() {
			if t.Field(i).Tag.Get("mapstructure") == part {
				v = v.Field(i)
				found = true
				break
			}
		}
		if !found {
			return reflect.Value{}
		}
	}
	return v
}

// keyAnnotation is the pflag annotation in which BindFlags records the key
// a flag sets, so that Load needs nothing but the flag set.
const keyAnnotation = "mqttinfer/config-key"

// commandAnnotation is the annotation of the --config flag in which
// BindFlags records the command, for the defaults that depend on it.
const commandAnnotation = "mqttinfer/command"

// commandOf is the command whose flags fs holds (BindFlags); ServeCmd
// when there are none.
func commandOf(fs *pflag.FlagSet) Command {
	if fs != nil {
		if f := fs.Lookup(FlagConfig); f != nil && len(f.Annotations[commandAnnotation]) == 1 {
			for _, c := range []Command{ServeCmd, WorkerCmd, ClientCmd} {
				if c.String() == f.Annotations[commandAnnotation][0] {
					return c
				}
			}
		}
	}
	return ServeCmd
}

// BindFlags registers on fs the --config flag and the flags that cmd (one
// command) has: one for each option whose Flag column in REFERENCE.md names
// cmd, and its alias. The flags' defaults are the defaults of Default, except
// --client-id, whose empty default means the derived
// "<prefix>-worker-<random>"; they only show in help. Load uses a flag only
// when it was set on the command line, so an unset flag never overrides the
// file or the environment. Call it once per flag set (pflag panics on a flag
// defined twice).
func BindFlags(fs *pflag.FlagSet, cmd Command) {
	fs.String(FlagConfig, "", "config file (YAML); default $"+EnvConfigFile+", else ./"+DefaultFile+" if it exists")
	fs.Lookup(FlagConfig).Annotations = map[string][]string{commandAnnotation: {cmd.String()}}
	// Flag defaults come from defaultsFor, not DefaultFor: a derived value
	// such as the remote client id must not look as if it were set.
	d := defaultsFor(cmd)
	for _, o := range options {
		if o.on&cmd == 0 {
			continue
		}
		v := field(&d, o.key)
		for _, name := range []string{o.flag, o.alias} {
			if name == "" {
				continue
			}
			usage := o.usage
			if name == o.alias {
				usage = "same as --" + o.flag
			}
			switch {
			case v.Type() == durationType:
				fs.Duration(name, v.Interface().(time.Duration), usage)
			case v.Kind() == reflect.String:
				fs.String(name, v.String(), usage)
			case v.Kind() == reflect.Int:
				fs.Int(name, int(v.Int()), usage)
			case v.Kind() == reflect.Float64:
				fs.Float64(name, v.Float(), usage)
			case v.Kind() == reflect.Bool:
				fs.Bool(name, v.Bool(), usage)
			}
			fs.Lookup(name).Annotations = map[string][]string{keyAnnotation: {o.key}}
		}
	}
}

// flagKey is the key a flag registered by BindFlags sets, "" for other flags.
func flagKey(f *pflag.Flag) string {
	if k := f.Annotations[keyAnnotation]; len(k) == 1 {
		return k[0]
	}
	return ""
}
