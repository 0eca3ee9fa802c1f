// Package gateway owns the service's HTTP front door: /healthz, /readyz and
// Prometheus /metrics today; the REST + SSE inference API joins it over the
// same worker core.
package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one part of the service is ready; nil means ready.
type Check func(ctx context.Context) error

// Options configure the handler.
type Options struct {
	// Gatherer serves /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
	// Ready are the readiness checks of /readyz, by name.
	Ready map[string]Check
}

// New returns the HTTP handler of the gateway.
//
//	GET /healthz  200 "ok" while the process serves HTTP (liveness)
//	GET /readyz   200 when every readiness check passes, else 503; JSON body with each check
//	GET /metrics  Prometheus text format
func New(opts Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		status := http.StatusOK
		checks := make(map[string]string, len(opts.Ready))
		for name, check := range opts.Ready {
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
	if opts.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}
