package gateway

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/worker"
)

// keepAlive is how often an idle stream (a request waiting in the queue, a
// slow model) gets an SSE comment line, so that proxies and load balancers
// do not close it as idle.
const keepAlive = 15 * time.Second

// stream answers a streamed request with Server-Sent Events, one per stream
// event of the pool, flushed as it comes:
//
//	event: delta|done|error
//	id: <seq>
//	data: <api.StreamEvent as JSON>
//
// The HTTP status is 200 once the pool took the request; the request's
// outcome is the status of the final done or error event, which is always
// the last. Events are JSON even for a CBOR request: SSE is text.
//
// A client that goes away cancels the request: the handler returns, net/http
// cancels the request's context, the pool stops the model and counts 499,
// and the events still to come are dropped, not queued.
func (g *gateway) stream(x *exchange, job worker.Job, adm admission) {
	events := make(chan api.StreamEvent, 16)
	finished := make(chan struct{})
	gone := make(chan struct{})
	defer close(gone)
	err := g.pool.Submit(worker.Task{
		Job:     job,
		Context: x.r.Context(),
		Event: func(ev api.StreamEvent) {
			select {
			case events <- ev:
			case <-gone:
			}
		},
		Done:   func() { adm.release(); close(finished) },
		Settle: adm.settle,
	})
	if err != nil {
		g.refused(x, adm, err)
		return
	}

	h := x.w.Header()
	if g.limiter != nil {
		setRateLimitHeaders(h, *g.decision(x))
	}
	h.Set("Content-Type", contentTypeSSE)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	x.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(x.w)
	if err := flush(rc); err != nil {
		return
	}

	ticker := time.NewTicker(keepAlive)
	defer ticker.Stop()
	send := func(ev api.StreamEvent) (final bool, ok bool) {
		if err := g.writeEvent(x, rc, ev); err != nil {
			g.log.Debug("stream write", "client", x.client, "id", x.id, "error", err)
			return false, false
		}
		return ev.Event != api.EventDelta, true
	}
	for {
		select {
		case ev := <-events:
			final, ok := send(ev)
			if !ok {
				return
			}
			if final {
				// The pool settles the throttle and calls Done right after
				// the final event: wait, so that the response ends only once
				// the client's in-flight slot is free again.
				select {
				case <-finished:
				case <-x.r.Context().Done():
				}
				return
			}
		case <-finished:
			// Every event was handed over before Done; some may still be
			// buffered.
			for {
				select {
				case ev := <-events:
					if final, ok := send(ev); !ok || final {
						return
					}
				default:
					g.log.Error("stream ended without a final event", "model", x.model, "id", x.id)
					return
				}
			}
		case <-ticker.C:
			if _, err := x.w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			if err := flush(rc); err != nil {
				return
			}
		case <-x.r.Context().Done():
			return
		}
	}
}

// writeEvent writes one stream event and flushes it.
func (g *gateway) writeEvent(x *exchange, rc *http.ResponseController, ev api.StreamEvent) error {
	data, err := api.Marshal(x.ver, ev)
	if err != nil {
		return err
	}
	// JSON from encoding/json has no raw newlines, so one data line holds it.
	buf := make([]byte, 0, len(data)+48)
	buf = append(buf, "event: "...)
	buf = append(buf, ev.Event...)
	buf = append(buf, "\nid: "...)
	buf = strconv.AppendInt(buf, int64(ev.Seq), 10)
	buf = append(buf, "\ndata: "...)
	buf = append(buf, data...)
	buf = append(buf, "\n\n"...)
	if _, err := x.w.Write(buf); err != nil {
		return err
	}
	return flush(rc)
}

// flush sends what was written; a ResponseWriter that cannot flush is not
// an error, the events then leave when the handler returns.
func flush(rc *http.ResponseController) error {
	if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}
