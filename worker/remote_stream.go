package worker

import (
	"context"
	"fmt"

	"github.com/mqttinfer/mqttinfer/api"
)

// remoteLane keeps one device's requests for one model in arrival order on
// a Remote: the goroutine that runs a request runs the ones queued behind
// it next (see Pool's lane, the same idea).
type remoteLane struct {
	next []*delivery
	// open are the lane's requests with an id of the device's, not yet
	// answered: a copy of one of them (a redelivery, or the device's own
	// retry) does not queue but waits for its reply.
	open map[DedupKey]*delivery
}

// enqueue takes a decoded request at intake, in arrival order, without
// blocking. A copy of a request in its lane not yet answered waits for
// that request's reply. Otherwise the throttle charges it (admit); a
// request refused there or earlier (malformed, too large) is answered at
// once, outside the lane: it runs no model, so it need not wait its turn.
// The rest is registered for cancellation and queued in its lane (device
// and model); the first request of an idle lane starts the lane's
// goroutine.
func (r *Remote) enqueue(d *delivery) {
	key := laneKey(d.topic.Device, d.topic.Model)
	if d.reject == nil && !d.generated {
		r.lmu.Lock()
		if l := r.lanes[key]; l != nil {
			if first := l.open[d.dedupKey()]; first != nil {
				first.copies = append(first.copies, d)
				r.waiting.Add(1)
				r.lmu.Unlock()
				return
			}
		}
		r.lmu.Unlock()
	}
	if d.reject == nil && r.waiting.Load() >= int64(r.opts.QueueSize) {
		// Like the pool's bounded queue: past it the worker sheds load with
		// a clear 503 instead of letting deadlines expire in its lanes.
		d.reject = api.Errorf(api.Overloaded, "the worker has %d requests waiting; retry later", r.waiting.Load())
	}
	if d.reject == nil {
		r.admit(d)
	}
	if d.reject != nil {
		go func() {
			defer r.tasks.leave()
			r.reject(d, d.body.ID, d.reject)
		}()
		return
	}

	d.ctx, d.cancel = context.WithCancelCause(r.workCtx)
	r.waiting.Add(1)
	r.lmu.Lock()
	defer r.lmu.Unlock()
	r.registerLocked(d)
	l, busy := r.lanes[key]
	if !busy {
		l = &remoteLane{}
		r.lanes[key] = l
	}
	if !d.generated {
		if l.open == nil {
			l.open = make(map[DedupKey]*delivery)
		}
		l.open[d.dedupKey()] = d
	}
	if busy {
		l.next = append(l.next, d)
		return
	}
	go r.runLane(key, d)
}

// runLane answers d, then the requests queued behind it in its lane, one
// after the other, and closes the lane. Each request holds a task (entered
// by the intake) until it is answered, so shutdown waits for the lane.
func (r *Remote) runLane(key string, d *delivery) {
	for d != nil {
		r.waiting.Add(-1)
		reply := r.handle(d)
		copies, next := r.nextInLane(key, d)
		for _, c := range copies {
			r.waiting.Add(-1)
			r.answerCopy(c, reply)
			r.tasks.leave()
		}
		r.tasks.leave()
		d = next
	}
}

// answerCopy answers a copy of a request that arrived before the request
// was answered with the request's own final reply.
func (r *Remote) answerCopy(c *delivery, reply []byte) {
	if reply == nil {
		r.log.Warn("duplicate request left unanswered: the first copy has no reply", "topic", c.msg.Topic(), "id", c.body.ID)
		return
	}
	r.core.Metrics.Duplicate()
	r.log.Debug("duplicate request answered with the first copy's reply", "topic", c.msg.Topic(), "id", c.body.ID)
	r.send(c, reply)
}

// nextInLane closes the request d just answered: it returns the copies of
// d that waited for its reply, and the request queued behind d in its
// lane, or closes the lane.
func (r *Remote) nextInLane(key string, d *delivery) (copies []*delivery, next *delivery) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	l := r.lanes[key]
	if l == nil {
		return nil, nil
	}
	if !d.generated {
		if k := d.dedupKey(); l.open[k] == d {
			delete(l.open, k)
		}
	}
	copies, d.copies = d.copies, nil
	if len(l.next) == 0 {
		delete(r.lanes, key)
		return copies, nil
	}
	next = l.next[0]
	l.next[0] = nil
	l.next = l.next[1:]
	return copies, next
}

// registerLocked makes d cancelable by its device and id, unless another
// request of the device's with that id (for another model) holds the place.
func (r *Remote) registerLocked(d *delivery) {
	k := cancelKey(d.topic.Device, d.body.ID)
	if _, taken := r.running[k]; !taken {
		r.running[k] = d
	}
}

// unregister forgets an answered request and releases its context.
func (r *Remote) unregister(d *delivery) {
	r.lmu.Lock()
	k := cancelKey(d.topic.Device, d.body.ID)
	if r.running[k] == d {
		delete(r.running, k)
	}
	r.lmu.Unlock()
	d.cancel(nil)
}

// cancelRequest acts on a cancel request ({"id": "x", "cancel": true}) at
// intake: the device's queued or running request x on this worker is
// canceled, and answered 499 (a stream ends with a 499 error event). The
// cancel itself gets no reply, whether or not this worker knows the id.
//
// Limitation: in a shared-subscription group the broker hands the cancel
// to any member, not necessarily the one running the request, and the
// members share nothing. A member that does not know the id cannot tell a
// request that another member runs from one that never existed or has
// finished, so it answers nothing (a 400 would be wrong when another
// member runs it) and the request runs to its end. Cancels are reliable
// with a single remote worker, or on the embedded broker's in-process pool,
// which answers an unknown id 400.
//
// Called on paho's routing goroutine: it must not block, so the cancel
// message is acknowledged from a goroutine of its own.
func (r *Remote) cancelRequest(d *delivery) {
	t := d.topic
	r.lmu.Lock()
	target := r.running[cancelKey(t.Device, d.body.ID)]
	r.lmu.Unlock()
	if target != nil {
		target.cancel(errCanceledByDevice)
		r.log.Debug("request canceled by its device", "device", t.Device, "id", d.body.ID)
	} else {
		r.log.Debug("cancel for a request this worker does not run (another worker of the group may run it, or it has finished); ignored",
			"device", t.Device, "id", d.body.ID)
	}
	go func() {
		defer r.tasks.leave()
		d.ack()
	}()
}

// stream runs a streamed job: it publishes every delta event on the
// request's result topic at QoS 1 as the model produces it, each
// acknowledged by the broker before the next goes out, so the events reach
// the broker in seq order. It returns the final (done or error) event
// encoded, without publishing it: the caller settles the device's tokens
// first, then publishes it and acknowledges the request.
//
// Should an event fail to be published (the connection is down for longer
// than the publish timeout), the model is stopped, because the device would
// see a gap in seq; the final event then says 503 and the device retries.
//
// Only the final event is remembered for redelivered copies (see Dedup): a
// copy of a finished stream gets the final event alone, whose output is the
// whole answer, and its seq then follows no deltas. The model does not run
// again for it.
func (r *Remote) stream(d *delivery, job Job) (reply []byte, status int, share float64) {
	ctx, stop := context.WithCancelCause(d.ctx)
	defer stop(nil)
	broken := false
	final, share := r.core.RunStream(ctx, job, func(ev api.StreamEvent) {
		if ev.Event != api.EventDelta || broken {
			return
		}
		b, err := api.Marshal(job.Version, ev)
		if err == nil {
			err = r.publish(d, b)
		} else {
			r.log.Error("encode stream event", "topic", d.topic.String(), "id", ev.ID, "seq", ev.Seq, "error", err)
		}
		if err != nil {
			broken = true
			stop(fmt.Errorf("stream event %d of request %q not published: %w", ev.Seq, ev.ID, err))
		}
	})
	return r.encodeFinal(d.topic, final.ID, final.Status, final), final.Status, share
}
