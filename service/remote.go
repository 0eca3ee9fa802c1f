package service

import (
	"context"
	"log/slog"
	"sync"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/worker"
	"github.com/prometheus/client_golang/prometheus"
)

// RunWorker runs a remote worker (`mqttinfer worker`) from cfg until ctx is
// done, then stops gracefully.
func RunWorker(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	models, err := NewModels(cfg, log)
	if err != nil {
		return err
	}
	defer models.Close()
	var limiter *throttle.Limiter
	if cfg.Remote.Throttle {
		if limiter, err = NewThrottle(cfg, models.Registry); err != nil {
			return err
		}
	}
	core := &worker.Core{
		Models:          models.Registry,
		DefaultDeadline: cfg.Worker.DefaultDeadline,
		MaxDeadline:     cfg.Worker.MaxDeadline,
		Metrics:         metrics.New(prometheus.NewRegistry()),
		Log:             log.With("component", "worker"),
	}
	r, err := worker.NewRemote(core, worker.RemoteOptions{
		Broker:         cfg.Remote.Broker,
		ClientID:       cfg.Remote.ClientID,
		Username:       cfg.Remote.Username,
		Password:       cfg.Remote.Password,
		Prefix:         cfg.Prefix,
		Group:          cfg.Remote.Group,
		Concurrency:    cfg.Remote.PoolSize(),
		DedupTTL:       cfg.Remote.DedupTTL,
		Throttle:       limiter,
		MaxRequestSize: cfg.MQTT.MaxRequestSize,
		QueueSize:      cfg.Worker.QueueSize,
		Node:           cfg.Node,
		Version:        Version,
		Log:            log.With("component", "remote"),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { models.Run(ctx) })
	if limiter != nil {
		wg.Go(func() { limiter.Run(ctx) })
	}
	log.Info("mqttinfer worker starting", "broker", cfg.Remote.Broker, "group", cfg.Remote.Group,
		"prefix", cfg.Prefix, "models", models.Registry.Names(), "throttle", cfg.Remote.Throttle)
	err = r.Run(ctx)
	cancel()
	wg.Wait()
	return err
}
