// Package service assembles a running mqttinfer node from a config.Config:
// the embedded broker with its hooks, the throttle, the models, the
// in-process worker pool, the retained catalog and status, and the HTTP
// gateway. `mqttinfer serve` is this package plus flags; the end-to-end
// tests start the same assembly on random ports.
package service

import (
	"cmp"
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

	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/cluster"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/fleet"
	"github.com/mqttinfer/mqttinfer/gateway"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/journal"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

// Version is the service's version, reported in status messages; main sets it.
var Version = "dev"

// statusInterval is how often the retained status (with the queue depth) is refreshed.
const statusInterval = 10 * time.Second

// Service is one running node: broker, workers, models and HTTP.
type Service struct {
	cfg      config.Config
	log      *slog.Logger
	reg      *prometheus.Registry
	models   *Models
	limiter  *throttle.Limiter
	httpLim  *throttle.Limiter // HTTP clients: their own buckets, the same limits
	certs    *certs            // the TLS certificates, nil without TLS
	journal  *journaling       // the broker's dispatcher with storage on, nil without
	edge     *cluster.Edge     // the broker's dispatcher in a cluster, nil outside one
	nc       *nats.Conn        // the cluster's connection, nil outside one
	metrics  *metrics.Metrics
	fleet    *fleet.Fleet // the live view of the devices (dashboard, MCP)
	broker   *broker.Broker
	pool     *worker.Pool // MQTT requests when worker.in_process is on; HTTP requests always
	httpSrv  *http.Server
	httpLn   net.Listener
	since    string
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// New builds a node from cfg, binding its listeners (so the addresses are
// known) without serving yet. cfg must have passed Validate.
func New(cfg config.Config, log *slog.Logger) (*Service, error) {
	s := &Service{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(metrics.Runtime()...)
	m := metrics.New(s.reg)
	s.metrics = m

	var err error
	if s.models, err = NewModels(cfg, log); err != nil {
		return nil, err
	}
	m.SetModels(s.models.Registry.Has)
	if cfg.Throttle.Enabled {
		if s.limiter, err = NewThrottle(cfg, s.models.Registry); err != nil {
			return nil, err
		}
	}
	s.fleet = fleet.New(fleet.Options{Throttle: s.limiter, Workers: s.fleetWorkers})
	core := &worker.Core{
		Models:          s.models.Registry,
		DefaultDeadline: cfg.Worker.DefaultDeadline,
		MaxDeadline:     cfg.Worker.MaxDeadline,
		Metrics:         m,
		Log:             log.With("component", "worker"),
	}
	if cfg.TLS.CertFile != "" {
		if s.certs, err = newCerts(cfg.TLS, log.With("component", "tls")); err != nil {
			return nil, err
		}
	}
	opts := broker.Options{
		Prefix:                 cfg.Prefix,
		TCPAddr:                cfg.MQTT.TCPAddr,
		WSAddr:                 cfg.MQTT.WSAddr,
		TLSAddr:                cfg.MQTT.TLSAddr,
		CertIdentity:           cfg.TLS.Identity,
		MaxPacketSize:          cfg.MQTT.MaxPacketSize,
		MaxRequestSize:         cfg.MQTT.MaxRequestSize,
		RequestLimit:           s.models.Registry.MaxRequestSize,
		MaxClientWritesPending: cfg.MQTT.MaxClientWritesPending,
		MaxClients:             cfg.MQTT.MaxClients,
		SessionExpiry:          cfg.MQTT.SessionExpiry,
		MaxKeepAlive:           cmp.Or(cfg.MQTT.MaxKeepAlive, -1),
		Throttle:               s.limiter,
		Models:                 s.models.Registry.Names,
		HasModel:               s.models.Registry.Has,
		Metrics:                m,
		Log:                    log.With("component", "broker"),
	}
	if s.certs != nil {
		opts.TLS = s.certs.serverConfig(cfg.TLS.ClientCAFile != "")
	}
	var auth *config.Authenticator // the gateway's; nil without auth
	if cfg.Auth.Enabled {
		creds, err := config.LoadCredentials(cfg.Auth.CredentialsFile)
		if err != nil {
			return nil, err
		}
		if w := creds.Warning(); w != "" {
			log.Warn(w, "file", cfg.Auth.CredentialsFile)
		}
		opts.Credentials = creds
		if auth, err = config.NewAuthenticator(creds); err != nil {
			return nil, err
		}
	}
	// The pool serves the embedded broker's requests when in-process
	// workers are on, and the HTTP gateway's always: one path, two front doors.
	s.pool = worker.NewPool(core, cfg.Worker.PoolSize(), cfg.Worker.QueueSize)
	s.pool.Transport = "http"
	if cfg.Worker.InProcess {
		opts.Dispatcher = observed{s}
		s.pool.Transport = "in_process"
	}
	if cfg.Storage.Dir != "" {
		opts.StorageDir = brokerDir(cfg.Storage.Dir)
		if cfg.Worker.InProcess && cfg.Cluster.URL == "" { // a cluster keeps its requests in JetStream
			j, err := journal.Open(journalDir(cfg.Storage.Dir))
			if err != nil {
				return nil, err
			}
			s.journal = &journaling{pool: observed{s}, j: j, log: log.With("component", "journal")}
			opts.Dispatcher = s.journal
		}
	}
	if cfg.Cluster.URL != "" {
		if err := s.joinCluster(&opts); err != nil {
			s.closeJournal()
			return nil, err
		}
	}
	opts.Sessions = s.fleet
	if s.edge != nil {
		opts.Sessions = sessions{s.edge, s.fleet}
	}
	if s.broker, err = broker.New(opts); err != nil {
		s.closeJournal()
		s.closeCluster()
		return nil, err
	}
	if cfg.HTTP.Addr != "" {
		if s.httpLn, err = net.Listen("tcp", cfg.HTTP.Addr); err != nil {
			s.broker.Close()
			s.closeJournal()
			s.closeCluster()
			return nil, fmt.Errorf("http listener on %s: %w", cfg.HTTP.Addr, err)
		}
		switch {
		case cfg.Throttle.Enabled && cfg.Auth.Enabled:
			// An HTTP client is a user of the credentials file: a device has
			// one bucket, whichever door it comes through.
			s.httpLim = s.limiter
		case cfg.Throttle.Enabled:
			// An HTTP client is its address: buckets of its own.
			if s.httpLim, err = NewThrottle(cfg, s.models.Registry); err != nil {
				s.broker.Close()
				s.closeJournal()
				s.closeCluster()
				return nil, err
			}
		}
		var repo gateway.Repository
		if s.models.Repository != nil {
			repo = s.models.Repository
		}
		s.httpSrv = &http.Server{
			Handler: gateway.New(gateway.Options{
				Repository:  repo,
				Gatherer:    s.reg,
				Ready:       s.readyChecks(),
				Pool:        s.pool,
				Models:      s.models.Registry,
				Auth:        auth,
				Throttle:    s.httpLim,
				Metrics:     m,
				MaxBodySize: cfg.MQTT.MaxRequestSize,
				Pprof:       cfg.HTTP.Pprof,
				Fleet:       s.fleet,
				MCP:         mcpHandler(log.With("component", "mcp")),
				Log:         log.With("component", "gateway"),
			}),
			ReadHeaderTimeout: 10 * time.Second,
		}
	}
	return s, nil
}

// Start serves MQTT and HTTP, starts the workers and the housekeeping, and
// publishes the retained catalog and the online status. It returns at once.
func (s *Service) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.pool.Start(s.broker)
	if s.edge != nil {
		// The streams first: the broker takes requests only once they
		// have somewhere to go.
		sctx, scancel := context.WithTimeout(ctx, time.Minute)
		err := s.edge.Setup(sctx)
		scancel()
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		s.goRun(func() { _ = s.edge.Run(ctx, s.broker) })
	}
	if err := s.broker.Serve(); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	if s.journal != nil {
		// Requests accepted before a crash and never answered: run them now.
		adm := &pipeline.Admission{MaxSize: s.cfg.MQTT.MaxRequestSize, Limit: s.models.Registry.MaxRequestSize,
			HasModel: s.models.Registry.Has, Models: s.models.Registry.Names, Metrics: s.metrics}
		n, err := s.replay(s.journal, adm)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		if n > 0 {
			s.log.Warn("requests accepted before the last stop and not answered are run now", "count", n)
		}
	}
	if err := s.publishCatalog(); err != nil {
		return err
	}
	s.since = time.Now().UTC().Format(time.RFC3339)
	s.publishStatus("online")
	s.goRun(func() { s.refreshStatus(ctx) })
	limiters := []*throttle.Limiter{s.limiter}
	if s.httpLim != s.limiter {
		limiters = append(limiters, s.httpLim)
	}
	for _, l := range limiters {
		if l != nil {
			s.goRun(func() { l.Run(ctx) })
		}
	}
	s.goRun(func() { s.models.Run(ctx) })
	s.goRun(func() { s.fleet.Run(ctx) })
	s.goRun(func() { s.republishCatalog(ctx) })
	s.goRun(func() { s.releaseMemory(ctx) })
	if s.certs != nil {
		s.goRun(func() { s.certs.run(ctx) })
	}
	if s.httpSrv != nil {
		s.goRun(func() {
			serve := func() error { return s.httpSrv.Serve(s.httpLn) }
			if s.certs != nil {
				s.httpSrv.TLSConfig = s.certs.serverConfig(false)
				serve = func() error { return s.httpSrv.ServeTLS(s.httpLn, "", "") }
			}
			if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("http server stopped", "error", err)
			}
		})
	}
	s.log.Info("mqttinfer serving", "node", s.cfg.Node, "mqtt", s.broker.Addr(), "ws", s.cfg.MQTT.WSAddr,
		"http", s.HTTPAddr(), "prefix", s.cfg.Prefix, "models", s.models.Registry.Names(),
		"in_process_workers", s.cfg.Worker.InProcess && s.edge == nil, "cluster", s.cfg.Cluster.URL, "throttle", s.cfg.Throttle.Enabled, "auth", s.cfg.Auth.Enabled)
	return nil
}

func (s *Service) goRun(f func()) { s.wg.Go(f) }

// Shutdown stops gracefully: intake stops (new requests are answered 503),
// queued and running requests finish and are answered, the offline status is
// published, then the broker and the HTTP server close. When ctx ends first
// the running models are canceled.
func (s *Service) Shutdown(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		err = s.pool.Stop(ctx)
		s.publishStatus("offline")
		if s.cancel != nil {
			s.cancel()
		}
		if s.httpSrv != nil {
			hctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if s.httpSrv.Shutdown(hctx) != nil {
				_ = s.httpSrv.Close() // streams still open: end them
			}
			cancel()
		}
		s.broker.Close()
		s.wg.Wait()
		s.models.Close()
		s.closeJournal()
		s.closeCluster()
	})
	return err
}

func (s *Service) closeJournal() {
	if s.journal != nil {
		if err := s.journal.j.Close(); err != nil {
			s.log.Warn("journal: close", "error", err)
		}
	}
}

// MQTTAddr is the bound MQTT over TCP address.
func (s *Service) MQTTAddr() string { return s.broker.Addr() }

// MQTTTLSAddr is the bound MQTT over TLS address ("" when it is off).
func (s *Service) MQTTTLSAddr() string { return s.broker.TLSAddr() }

// HTTPAddr is the bound HTTP address ("" when HTTP is off).
func (s *Service) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// HasSubscribers reports whether a client is subscribed to a filter that
// matches topic on the embedded broker (for tests and diagnostics).
func (s *Service) HasSubscribers(topic string) bool { return s.broker.HasSubscribers(topic) }

// Registry is the service's Prometheus registry.
func (s *Service) Registry() *prometheus.Registry { return s.reg }

// Models are the models this node serves.
func (s *Service) Models() *inference.Registry { return s.models.Registry }

// workersReady: something serves MQTT requests, and the in-process queue
// has room. Without in-process workers that means a remote worker is
// subscribed to the requests (otherwise every request is answered 503).
func (s *Service) workersReady(context.Context) error {
	if q := s.pool.QueueDepth(); q >= s.cfg.Worker.QueueSize {
		return fmt.Errorf("request queue is full (%d)", q)
	}
	if !s.cfg.Worker.InProcess && !s.broker.HasSubscribers(topics.Request(s.cfg.Prefix, topics.Latest(), "readyz", "readyz")) {
		return fmt.Errorf("no remote worker is connected (in-process workers are off): run mqttinfer worker --broker tcp://%s", s.broker.Addr())
	}
	return nil
}

func (s *Service) publishCatalog() error {
	msgs, err := worker.Catalog(s.cfg.Prefix, s.models.Registry)
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	for _, a := range msgs {
		if err := s.broker.Publish(a.Topic, a.Payload, true, 1); err != nil {
			return fmt.Errorf("publish catalog on %s: %w", a.Topic, err)
		}
	}
	return nil
}

// republishCatalog publishes the retained catalog again whenever the model
// repository changed what is served.
func (s *Service) republishCatalog(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.models.Changes():
			if err := s.publishCatalog(); err != nil {
				s.log.Warn("catalog", "error", err)
			}
		}
	}
}

// Reload scans the model repository now (SIGHUP).
func (s *Service) Reload() { s.models.Reload() }

func (s *Service) publishStatus(state string) {
	st := worker.Status{
		Node:      s.cfg.Node,
		State:     state,
		Version:   Version,
		Transport: "in_process",
		Models:    s.models.Registry.Names(),
		Since:     s.since,
	}
	if !s.cfg.Worker.InProcess {
		st.Transport = "broker_only"
	}
	if s.edge != nil {
		st.Transport = "cluster_edge"
	}
	st.QueueDepth = s.pool.QueueDepth()
	if state == "offline" {
		st.Since = time.Now().UTC().Format(time.RFC3339)
	}
	if s.edge != nil {
		s.edge.PutStatus(st) // every edge publishes every node's status
	}
	msgs, err := worker.StatusMessages(s.cfg.Prefix, st)
	if err != nil {
		s.log.Error("encode status", "error", err)
		return
	}
	for _, a := range msgs {
		if err := s.broker.Publish(a.Topic, a.Payload, true, 1); err != nil {
			s.log.Warn("publish status", "topic", a.Topic, "error", err)
		}
	}
}

func (s *Service) refreshStatus(ctx context.Context) {
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.publishStatus("online")
		}
	}
}
