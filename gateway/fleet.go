package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/fleet"
	"github.com/mqttinfer/mqttinfer/topics"
)

// DefaultFleetInterval is how often /fleet/events sends the view when it
// changed and Options.FleetInterval is 0.
const DefaultFleetInterval = time.Second

// watchers are the roles that may see the whole fleet: as on MQTT, where
// observers read all results and devices only their own.
var watchers = []config.Role{config.RoleObserver, config.RoleWorker}

// fleetRoutes are the routes of the fleet view (Options.Fleet).
func (g *gateway) fleetRoutes() []route {
	if g.fleet == nil {
		return nil
	}
	return []route{
		{"GET /fleet", g.fleetSnapshot, watchers},
		{"GET /fleet/devices/{device}/results", g.deviceResults, watchers},
		{"GET /fleet/anomalies", g.fleetAnomalies, watchers},
		{"GET /fleet/events", g.fleetEvents, watchers},
	}
}

// fleetSnapshot answers GET /fleet with fleet.Snapshot.
func (g *gateway) fleetSnapshot(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, g.fleet.Snapshot())
}

// limit is the query's n, 0 when absent or not a number.
func limit(r *http.Request) int {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	return n
}

// deviceResults answers GET /fleet/devices/{device}/results?n= with the
// device's recent results, newest first; a device not tracked has none.
func (g *gateway) deviceResults(w http.ResponseWriter, r *http.Request) {
	dev := r.PathValue("device")
	if err := topics.ValidID(dev); err != nil {
		writeJSON(w, http.StatusBadRequest, api.ErrorResult("", "", api.Errorf(api.InvalidRequest, "device: %v", err)))
		return
	}
	res, ok := g.fleet.Results(dev, limit(r))
	if res == nil {
		res = []fleet.Result{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": dev, "tracked": ok, "results": res})
}

// fleetAnomalies answers GET /fleet/anomalies?n= with the recent anomalies, newest first.
func (g *gateway) fleetAnomalies(w http.ResponseWriter, r *http.Request) {
	a := g.fleet.Anomalies(limit(r))
	if a == nil {
		a = []fleet.Anomaly{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"anomalies": a})
}

// fleetEvent is one event of /fleet/events.
type fleetEvent struct {
	fleet.Snapshot
	// Latest are the models' latest requests and replies that changed
	// since the previous event (all of them in the first).
	Latest    []fleet.Latest  `json:"latest"`
	Anomalies []fleet.Anomaly `json:"anomalies"`
}

// fleetEvents answers GET /fleet/events with Server-Sent Events: one
// "fleet" event (fleetEvent) at once, then one every FleetInterval while
// the view changes, and a comment line when it has not for keepAlive.
// Nothing is computed for a view that did not change.
func (g *gateway) fleetEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentTypeSSE)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	tick := time.NewTicker(g.fleetInterval)
	defer tick.Stop()
	var sent, latestSeq uint64
	idle := time.Now()
	first := true
	for {
		if seq := g.fleet.Seq(); first || seq != sent {
			ev := fleetEvent{Snapshot: g.fleet.Snapshot(), Latest: g.fleet.Latest(latestSeq), Anomalies: g.fleet.Anomalies(20)}
			sent, first = ev.Seq, false
			for _, l := range ev.Latest {
				latestSeq = max(latestSeq, l.Seq)
			}
			b, err := json.Marshal(ev)
			if err != nil {
				return
			}
			if _, err := w.Write(append(append([]byte("event: fleet\ndata: "), b...), '\n', '\n')); err != nil {
				return
			}
			flusher.Flush()
			idle = time.Now()
		} else if time.Since(idle) >= keepAlive {
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			flusher.Flush()
			idle = time.Now()
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}
