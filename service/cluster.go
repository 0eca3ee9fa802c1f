package service

import (
	"time"

	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/cluster"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/gateway"
)

// clusterOptions are the cluster settings of cfg.
func clusterOptions(cfg config.Config) cluster.Options {
	return cluster.Options{
		Prefix:      cfg.Prefix,
		Partitions:  cfg.Cluster.Partitions,
		Replicas:    cfg.Cluster.Replicas,
		ResultTTL:   cfg.Cluster.ResultTTL,
		DedupWindow: cfg.Cluster.DedupWindow,
		MaxQueued:   cfg.Cluster.MaxQueued,
	}
}

// joinCluster makes this node an edge of the cluster at cluster.url: the
// broker's requests go to the request stream instead of the in-process
// pool (which still serves HTTP).
func (s *Service) joinCluster(opts *broker.Options) error {
	nc, err := cluster.Connect(s.cfg.Cluster.URL, "mqttinfer edge "+s.cfg.Node, s.log.With("component", "nats"))
	if err != nil {
		return err
	}
	s.nc = nc
	s.edge, err = cluster.NewEdge(cluster.EdgeOptions{
		Options:  clusterOptions(s.cfg),
		Conn:     nc,
		Node:     s.cfg.Node,
		Hold:     s.cfg.Worker.MaxDeadline + time.Minute,
		Throttle: s.limiter,
		Metrics:  s.metrics,
		Log:      s.log.With("component", "edge"),
	})
	if err != nil {
		nc.Close()
		return err
	}
	opts.Dispatcher = s.edge
	opts.Sessions = s.edge
	s.pool.Transport = "http"
	return nil
}

func (s *Service) closeCluster() {
	if s.nc != nil {
		s.nc.Close()
	}
}

// readyChecks are the checks of /readyz.
func (s *Service) readyChecks() map[string]gateway.Check {
	checks := map[string]gateway.Check{"broker": s.broker.Ready}
	if s.edge != nil {
		checks["cluster"] = s.edge.Ready
	} else {
		checks["workers"] = s.workersReady
	}
	return checks
}
