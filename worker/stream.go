package worker

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
)

// errCanceledByDevice is the cause of a context canceled because the device
// asked for it; the stream then ends with 499 canceled.
var errCanceledByDevice = errors.New("canceled by the device")

// Streams reports whether job should be answered with stream events: it
// asks for them and its model can stream.
func (c *Core) Streams(j Job) bool {
	if !j.Request.Stream {
		return false
	}
	m, ok := c.Models.Get(j.Model)
	if !ok {
		return false
	}
	_, ok = m.(inference.Streamer)
	return ok && m.Info().Streaming
}

// RunStream answers a job with stream events: delta events with seq 0, 1, …
// as the model produces them, then exactly one done or error event, which it
// also returns. emit is called from the calling goroutine only. share is
// the share of its up-front cost the request used when the model's output
// is metered, else -1.
func (c *Core) RunStream(ctx context.Context, j Job, emit func(api.StreamEvent)) (final api.StreamEvent, share float64) {
	share = -1
	seq := 0
	end := func(ev api.StreamEvent) api.StreamEvent {
		ev.ID, ev.Model, ev.Seq, ev.RateLimit = j.Request.ID, j.Model, seq, j.RateLimit
		emit(ev)
		return ev
	}
	fail := func(e *api.Error) api.StreamEvent {
		return end(api.StreamEvent{Event: api.EventError, Status: e.Status(), Error: e})
	}
	m, _, release, e := c.lookup(j)
	if e != nil {
		return fail(e), share
	}
	defer release()
	s, ok := m.(inference.Streamer)
	if !ok {
		return fail(api.Errorf(api.InvalidRequest, "model %q does not stream", j.Model)), share
	}
	ctx, cancel, e := c.deadline(ctx, j)
	if e != nil {
		return fail(e), share
	}
	defer cancel()

	req := inference.Request{Device: j.Device, Input: j.Request.Input, Params: j.Request.Params}
	out, err := c.guard(func() (any, error) {
		return s.InferStream(ctx, req, func(delta any) error {
			raw, err := json.Marshal(delta)
			if err != nil {
				return err
			}
			emit(api.StreamEvent{ID: j.Request.ID, Model: j.Model, Seq: seq, Event: api.EventDelta, Delta: raw})
			seq++
			return ctx.Err()
		})
	})
	if err != nil {
		return fail(c.classify(ctx, j, err)), share
	}
	done := api.StreamEvent{Event: api.EventDone, Status: api.StatusOK}
	if done.Output, err = json.Marshal(out); err != nil {
		return fail(api.Errorf(api.InferenceFailed, "model %q returned an output that cannot be encoded", j.Model)), share
	}
	if mt, ok := out.(inference.Metered); ok {
		var usage any
		usage, share = mt.Consumed()
		if done.Usage, err = json.Marshal(usage); err != nil {
			done.Usage = nil
		}
	}
	return end(done), share
}
