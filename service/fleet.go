package service

import (
	"log/slog"
	"net/http"

	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/fleet"
	"github.com/mqttinfer/mqttinfer/mcpserver"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/worker"
)

// dispatcher is what the broker hands requests to: it can cancel them too.
type dispatcher interface {
	broker.Dispatcher
	broker.Canceler
}

// observed is the in-process pool as the broker's dispatcher, with every
// reply it sends shown to the fleet view with the request it answers.
type observed struct{ s *Service }

var _ dispatcher = observed{}

func (o observed) Dispatch(r *pipeline.Request) error {
	return o.s.pool.Serve(r, observer{o.s.broker, r, o.s.fleet}, worker.Task{})
}

func (o observed) Cancel(device, id string) bool { return o.s.pool.Cancel(device, id) }

// observer sends the replies of one request and shows them to the fleet.
type observer struct {
	out   worker.Replier
	r     *pipeline.Request
	fleet *fleet.Fleet
}

func (o observer) Send(p pipeline.Reply, qos byte) error {
	o.fleet.Observe(o.r, p)
	return o.out.Send(p, qos)
}

// sessions tells two broker.Sessions the same (the cluster edge and the fleet).
type sessions [2]broker.Sessions

func (s sessions) Connected(d string)        { s[0].Connected(d); s[1].Connected(d) }
func (s sessions) Subscribed(d string)       { s[0].Subscribed(d); s[1].Subscribed(d) }
func (s sessions) Sent(d string, id uint16)  { s[0].Sent(d, id); s[1].Sent(d, id) }
func (s sessions) Acked(d string, id uint16) { s[0].Acked(d, id); s[1].Acked(d, id) }
func (s sessions) Disconnected(d string)     { s[0].Disconnected(d); s[1].Disconnected(d) }

// fleetWorkers lists the workers that serve this node: its in-process pool.
func (s *Service) fleetWorkers() []fleet.Worker {
	w := fleet.Worker{Name: s.cfg.Node, Transport: s.pool.Transport, State: "online",
		Queue: s.pool.QueueDepth(), Models: s.models.Registry.Names()}
	if s.cfg.Worker.InProcess {
		w.Workers = s.cfg.Worker.PoolSize()
	}
	return []fleet.Worker{w}
}

// mcpHandler makes the gateway's /mcp: the MCP server whose tools call the
// gateway in process, as the caller of /mcp.
func mcpHandler(log *slog.Logger) func(http.Handler) http.Handler {
	return func(gw http.Handler) http.Handler {
		return mcpserver.Handler(mcpserver.New(mcpserver.Local(gw)), log)
	}
}

// Fleet is the node's live view of its devices (the dashboard's and MCP's).
func (s *Service) Fleet() *fleet.Fleet { return s.fleet }
