package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nats-io/nats.go"

	"github.com/mqttinfer/mqttinfer/cluster"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/gateway"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/worker"
)

// Worker is a running remote worker (`mqttinfer worker`): the models, the
// remote transport and, when remote.http_addr is set, its operations
// listener (/metrics, /healthz, /readyz).
type Worker struct {
	cfg     config.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	models  *Models
	limiter *throttle.Limiter
	remote  *worker.Remote  // nil in a cluster
	cluster *cluster.Worker // nil outside a cluster
	nc      *nats.Conn
	httpLn  net.Listener
	httpSrv *http.Server
}

// NewWorker builds a remote worker from cfg, binding its HTTP listener (so
// the address is known) without serving yet. cfg must have passed Validate.
func NewWorker(cfg config.Config, log *slog.Logger) (*Worker, error) {
	w := &Worker{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	w.reg.MustRegister(metrics.Runtime()...)
	m := metrics.New(w.reg)
	var err error
	if w.models, err = NewModels(cfg, log); err != nil {
		return nil, err
	}
	m.SetModels(w.models.Registry.Has)
	if cfg.Remote.Throttle {
		if w.limiter, err = NewThrottle(cfg, w.models.Registry); err != nil {
			w.models.Close()
			return nil, err
		}
	}
	core := &worker.Core{
		Models:          w.models.Registry,
		DefaultDeadline: cfg.Worker.DefaultDeadline,
		MaxDeadline:     cfg.Worker.MaxDeadline,
		Metrics:         m,
		Log:             log.With("component", "worker"),
	}
	if cfg.Cluster.URL != "" {
		err = w.joinCluster(core, m)
	} else {
		err = w.connectRemote(core)
	}
	if err != nil {
		w.models.Close()
		return nil, err
	}
	ready := map[string]gateway.Check{"group": w.Ready}
	if cfg.Remote.HTTPAddr != "" {
		if w.httpLn, err = net.Listen("tcp", cfg.Remote.HTTPAddr); err != nil {
			w.models.Close()
			w.closeCluster()
			return nil, fmt.Errorf("http listener on %s: %w", cfg.Remote.HTTPAddr, err)
		}
		w.httpSrv = &http.Server{
			Handler:           gateway.Operations(w.reg, ready, cfg.HTTP.Pprof),
			ReadHeaderTimeout: 10 * time.Second,
		}
	}
	return w, nil
}

// connectRemote makes the worker's transport an MQTT broker.
func (w *Worker) connectRemote(core *worker.Core) error {
	cfg := w.cfg
	tlsCfg, err := cfg.Remote.TLSConfig()
	if err != nil {
		return err
	}
	version, err := mqttclient.ParseVersion(cfg.Remote.MQTTVersion)
	if err != nil {
		return err
	}
	w.remote, err = worker.NewRemote(core, worker.RemoteOptions{
		Broker:         cfg.Remote.Broker,
		MQTTVersion:    version,
		TLS:            tlsCfg,
		ClientID:       cfg.Remote.ClientID,
		Username:       cfg.Remote.Username,
		Password:       cfg.Remote.Password,
		Prefix:         cfg.Prefix,
		Group:          cfg.Remote.Group,
		Node:           cfg.Node,
		Version:        Version,
		Concurrency:    cfg.Remote.PoolSize(),
		QueueSize:      cfg.Worker.QueueSize,
		DedupTTL:       cfg.Remote.DedupTTL,
		Throttle:       w.limiter,
		MaxRequestSize: cfg.MQTT.MaxRequestSize,
		CatalogChanged: w.models.Changes(),
		Log:            w.log.With("component", "remote"),
	})
	return err
}

// joinCluster makes the worker's transport the cluster at cluster.url.
func (w *Worker) joinCluster(core *worker.Core, m *metrics.Metrics) error {
	cfg := w.cfg
	nc, err := cluster.Connect(cfg.Cluster.URL, "mqttinfer worker "+cfg.Node, w.log.With("component", "nats"))
	if err != nil {
		return err
	}
	w.nc = nc
	opts := clusterOptions(cfg)
	pool := worker.NewPool(core, cfg.Remote.PoolSize(), max(cfg.Worker.QueueSize, cluster.QueueSize(opts)))
	w.cluster = cluster.NewWorker(cluster.WorkerOptions{
		Options: opts,
		Conn:    nc,
		Node:    cfg.Node,
		Version: Version,
		Pool:    pool,
		Admission: &pipeline.Admission{MaxSize: cfg.MQTT.MaxRequestSize, Limit: w.models.Registry.MaxRequestSize,
			HasModel: w.models.Registry.Has, Models: w.models.Registry.Names, Metrics: m},
		Metrics: m,
		Log:     w.log.With("component", "cluster"),
	})
	return nil
}

func (w *Worker) closeCluster() {
	if w.nc != nil {
		w.nc.Close()
	}
}

// Ready reports whether the worker takes requests.
func (w *Worker) Ready(ctx context.Context) error {
	if w.cluster != nil {
		return w.cluster.Ready(ctx)
	}
	return w.remote.Ready(ctx)
}

// HTTPAddr is the bound address of the operations listener ("" when off).
func (w *Worker) HTTPAddr() string {
	if w.httpLn == nil {
		return ""
	}
	return w.httpLn.Addr().String()
}

// Registry is the worker's Prometheus registry.
func (w *Worker) Registry() *prometheus.Registry { return w.reg }

// Remote is the worker's MQTT transport (nil in a cluster).
func (w *Worker) Remote() *worker.Remote { return w.remote }

// Cluster is the worker's cluster transport (nil outside a cluster).
func (w *Worker) Cluster() *cluster.Worker { return w.cluster }

// Run serves until ctx is done, then leaves its group gracefully and
// returns; the models are closed.
func (w *Worker) Run(ctx context.Context) error {
	defer w.models.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { w.models.Run(ctx) })
	if w.limiter != nil {
		wg.Go(func() { w.limiter.Run(ctx) })
	}
	if w.httpSrv != nil {
		wg.Go(func() {
			if err := w.httpSrv.Serve(w.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				w.log.Error("http server stopped", "error", err)
			}
		})
	}
	r := w.cfg.Remote
	var err error
	if w.cluster != nil {
		w.log.Info("mqttinfer worker starting", "cluster", w.cfg.Cluster.URL, "node", w.cfg.Node, "prefix", w.cfg.Prefix,
			"models", w.models.Registry.Names(), "http", w.HTTPAddr())
		err = w.cluster.Run(ctx)
		w.closeCluster()
	} else {
		w.log.Info("mqttinfer worker starting", "broker", r.Broker, "group", r.Group, "node", w.cfg.Node, "prefix", w.cfg.Prefix,
			"models", w.models.Registry.Names(), "throttle", r.Throttle, "http", w.HTTPAddr())
		err = w.remote.Run(ctx)
	}
	if w.httpSrv != nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = w.httpSrv.Shutdown(hctx)
		hcancel()
	}
	cancel()
	wg.Wait()
	return err
}

// RunWorker runs a remote worker (`mqttinfer worker`) from cfg until ctx is
// done, then stops gracefully.
func RunWorker(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	w, err := NewWorker(cfg, log)
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
