// Package gateway owns the service's HTTP front door: /healthz, /readyz,
// Prometheus /metrics, and the REST + SSE inference API, which runs requests
// on the same worker pool as the MQTT front door and answers with the same
// payloads (api.Result, api.StreamEvent), the same status codes and the same
// per-client throttle.
//
// Inference routes, for each API version of topics.Versions():
//
//	GET  /{ver}/models                the model catalog, as retained on MQTT: {"models": [Info...]}
//	GET  /{ver}/models/{model}        one model's Info; 404 model_not_found
//	POST /{ver}/models/{model}/infer  one request envelope in, one api.Result out,
//	                                  or Server-Sent Events for a stream
//	GET  /openapi.json                the OpenAPI 3.0 description of all routes
//
// With Options.Fleet, the live fleet view (observers and workers only, with
// auth on) and the dashboard that draws it:
//
//	GET  /fleet                           fleet.Snapshot: devices, models' rate and latency, workers
//	GET  /fleet/devices/{device}/results  a device's recent results, newest first
//	GET  /fleet/anomalies                 the recent anomalies, newest first
//	GET  /fleet/events                    Server-Sent Events of the view as it changes
//	GET  /                                the dashboard (package dashboard); it asks for a login
//
// With Options.MCP, the Model Context Protocol (streamable HTTP) at /mcp,
// for any user with auth on; its tools call the routes above as that user.
//
// The HTTP status of an inference answer is the status of its api.Result
// (499 included, for a request whose client went away). A request asks for
// a stream with Accept: text/event-stream, ?stream=true or "stream": true;
// a model that streams answers it with Server-Sent Events, 200 once started,
// the outcome being the status of the final event; a model that does not
// stream answers the plain result. A client that disconnects cancels its
// request and the model stops.
//
// With auth on (Options.Auth), every route but /healthz and /readyz wants a
// login of a user of the credentials file: HTTP Basic with its username and
// password, or "Authorization: Bearer <API key>" with one of its API keys;
// otherwise 401 with "WWW-Authenticate: Basic realm="mqttinfer", Bearer".
// Roles apply as on MQTT: a device runs inference requests as itself (its
// username is the device id of the throttle and of the models' per-device
// state); observers and workers read the catalog and may not infer (403);
// /metrics and /debug/pprof/ are for observers and workers. Without auth
// the routes are open and a client is its IP address (ClientID).
//
// Each client is a device to the throttle and the models, and every
// inference answer carries the RateLimit-Policy and RateLimit headers of
// draft-ietf-httpapi-ratelimit-headers, plus Retry-After on a 429.
package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/dashboard"
	"github.com/mqttinfer/mqttinfer/fleet"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/worker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultMaxBodySize is the largest inference request body accepted when
// Options.MaxBodySize is 0, in bytes (64 KiB); larger bodies get 413.
const DefaultMaxBodySize = 64 << 10

// Check reports whether one part of the service is ready; nil means ready.
type Check func(ctx context.Context) error

// Options configure the handler. The zero value serves /healthz and /readyz,
// lists no models, and answers inference requests 503 model_unavailable.
type Options struct {
	// Gatherer serves /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
	// Ready are the readiness checks of /readyz, by name.
	Ready map[string]Check

	// Pool runs inference requests; it must be started (Pool.Start) by its
	// owner. nil answers every inference request 503 model_unavailable.
	Pool *worker.Pool
	// Models is the catalog served on /{ver}/models; it should be the
	// registry the Pool's core runs. nil means Pool.Core().Models, or no
	// models without a Pool.
	Models *inference.Registry
	// Throttle limits each client (its username with Auth, else ClientID)
	// with the same token buckets and in-flight limits as MQTT devices; nil
	// switches throttling off, and with it the RateLimit headers.
	Throttle *throttle.Limiter
	// Auth switches authentication on: only the users it knows may use the
	// routes other than /healthz and /readyz, as the package comment says.
	// It should hold the users the broker has (config.LoadCredentials,
	// config.NewAuthenticator). nil is the open development mode.
	Auth *config.Authenticator
	// Metrics counts requests refused before they reach the Pool (the Pool
	// counts the rest); nil counts nothing.
	Metrics *metrics.Metrics
	// MaxBodySize bounds an inference request body, in bytes; a larger
	// body is answered 413 payload_too_large. 0 means DefaultMaxBodySize.
	MaxBodySize int
	// TrustProxy takes the client address from the last entry of
	// X-Forwarded-For (the one the proxy in front of the gateway appended)
	// instead of the connection's peer. Set it only behind a proxy that sets
	// the header: otherwise any client can pick its own address, and with it
	// its own token bucket.
	TrustProxy bool
	// Repository, when set, is the model repository that
	// /{ver}/repository/{model}/load and /unload control.
	Repository Repository
	// Pprof serves Go's profiler under /debug/pprof/.
	Pprof bool
	// Fleet, when set, is the live view served under /fleet (to observers
	// and workers with auth on) and drawn by the dashboard at /.
	Fleet *fleet.Fleet
	// FleetInterval is how often /fleet/events sends a changed view; 0
	// means DefaultFleetInterval.
	FleetInterval time.Duration
	// MCP, when set, makes the handler of /mcp (any user with auth on) from
	// the gateway's own handler, which its tools call (mcpserver.Local).
	MCP func(gateway http.Handler) http.Handler
	// Log receives failures to answer, and refused logins at INFO
	// (rate-limited: config.LoginLog); nil discards them.
	Log *slog.Logger
}

// New returns the HTTP handler of the gateway: the operations routes of
// Operations and the inference routes of the package comment.
func New(opts Options) http.Handler {
	mux := http.NewServeMux()
	g := newGateway(opts)
	handleOperations(mux, opts.Gatherer, opts.Ready, opts.Pprof, func(h http.Handler) http.Handler {
		return g.authorize(h, config.RoleObserver, config.RoleWorker)
	})
	for _, rt := range append(g.routes(), g.fleetRoutes()...) {
		mux.Handle(rt.pattern, g.authorize(rt.handler, rt.roles...))
	}
	if opts.Fleet != nil {
		// The page holds no data: it asks for a login and reads /fleet/events.
		dashboard.Register(mux)
	}
	if opts.MCP != nil {
		mux.Handle("/mcp", g.authorize(opts.MCP(mux)))
	}
	return mux
}

// Operations returns the handler of a process's operations routes alone
// (`mqttinfer worker --http-addr`):
//
//	GET /healthz  200 "ok" while the process serves HTTP (liveness)
//	GET /readyz   200 when every readiness check passes, else 503; JSON body with each check
//	GET /metrics  Prometheus text format (when gatherer is not nil)
//
// and, with pprof, Go's profiler under /debug/pprof/.
func Operations(gatherer prometheus.Gatherer, ready map[string]Check, pprof bool) http.Handler {
	mux := http.NewServeMux()
	handleOperations(mux, gatherer, ready, pprof, func(h http.Handler) http.Handler { return h })
	return mux
}

// handleOperations registers the operations routes on mux, /metrics and
// the profiler behind protect.
func handleOperations(mux *http.ServeMux, gatherer prometheus.Gatherer, ready map[string]Check, withPprof bool, protect func(http.Handler) http.Handler) {
	if withPprof {
		mux.Handle("/debug/pprof/", protect(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", protect(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("/debug/pprof/profile", protect(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", protect(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", protect(http.HandlerFunc(pprof.Trace)))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		status := http.StatusOK
		checks := make(map[string]string, len(ready))
		for name, check := range ready {
			if err := check(ctx); err != nil {
				checks[name] = err.Error()
				status = http.StatusServiceUnavailable
			} else {
				checks[name] = "ok"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": status == http.StatusOK, "checks": checks})
	})
	if gatherer != nil {
		mux.Handle("GET /metrics", protect(promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{})))
	}
}

// gateway serves the inference routes.
type gateway struct {
	pool       *worker.Pool
	models     *inference.Registry
	limiter    *throttle.Limiter
	auth       *config.Authenticator // nil: open
	logins     *config.LoginLog
	metrics    *metrics.Metrics
	maxBody    int64
	trustProxy bool
	log        *slog.Logger
	openapi    []byte
	repo       Repository
	fleet      *fleet.Fleet
	// fleetInterval is Options.FleetInterval or its default.
	fleetInterval time.Duration
}

func newGateway(opts Options) *gateway {
	g := &gateway{
		pool:       opts.Pool,
		models:     opts.Models,
		limiter:    opts.Throttle,
		auth:       opts.Auth,
		logins:     config.NewLoginLog(opts.Log),
		metrics:    opts.Metrics,
		maxBody:    int64(opts.MaxBodySize),
		trustProxy: opts.TrustProxy,
		log:        opts.Log,
		openapi:    openAPIDocument(),
		repo:       opts.Repository,
		fleet:      opts.Fleet,
	}
	g.fleetInterval = cmp.Or(opts.FleetInterval, DefaultFleetInterval)
	if g.models == nil && g.pool != nil {
		g.models = g.pool.Core().Models
	}
	if g.models == nil {
		g.models = &inference.Registry{}
	}
	if g.maxBody <= 0 {
		g.maxBody = DefaultMaxBodySize
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	return g
}

// route is one ServeMux pattern of the inference API.
type route struct {
	pattern string
	handler http.HandlerFunc
	roles   []config.Role // who may use it with auth on; nil: every user
}

// routes lists the inference API; the OpenAPI test checks each is documented.
// The version is a path wildcard so that an unknown version is answered 404
// unsupported_version with the list of versions, as on MQTT.
func (g *gateway) routes() []route {
	return []route{
		{"GET /{ver}/models", g.catalog, nil},
		{"GET /{ver}/models/{model}", g.model, nil},
		{"POST /{ver}/models/{model}/infer", g.infer, []config.Role{config.RoleDevice}},
		{"GET /openapi.json", g.serveOpenAPI, nil},
		{"POST /{ver}/repository/{model}/load", g.loadModel, []config.Role{config.RoleWorker}},
		{"POST /{ver}/repository/{model}/unload", g.unloadModel, []config.Role{config.RoleWorker}},
	}
}
