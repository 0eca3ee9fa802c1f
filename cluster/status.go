package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/worker"
)

// The nodes' statuses: every edge and worker keeps its status in the
// status bucket (refreshed every statusEvery, "offline" when it stops),
// and every edge publishes all of them as the retained status topics of
// its broker, so that a watcher sees the same on any edge. A node whose
// status is not refreshed for statusStale died: the first edge to notice
// marks it offline, as an MQTT last will would. (Variables for the tests.)
var (
	statusEvery = 10 * time.Second
	statusStale = 3 * statusEvery
)

// RetainedPublisher is what the mirror needs of the broker.
type RetainedPublisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// putStatus stores a node's status.
func putStatus(ctx context.Context, kv jetstream.KeyValue, st worker.Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, st.Node, b)
	return err
}

// PutStatus stores this edge's status in the status bucket (its broker
// gets it back through the mirror, like every edge's).
func (e *Edge) PutStatus(st worker.Status) {
	if e.status == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := putStatus(ctx, e.status, st); err != nil {
		e.log.Warn("status not stored", "error", err)
	}
}

// mirror publishes the statuses of the bucket as retained messages on b
// until ctx ends, and marks offline the nodes that stopped refreshing
// theirs.
func (e *Edge) mirror(ctx context.Context, b RetainedPublisher) {
	for ctx.Err() == nil {
		if err := e.mirrorOnce(ctx, b); err != nil && ctx.Err() == nil {
			e.log.Warn("status mirror", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (e *Edge) mirrorOnce(ctx context.Context, b RetainedPublisher) error {
	w, err := e.status.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	check := time.NewTicker(statusEvery)
	defer check.Stop()
	latest := map[string]jetstream.KeyValueEntry{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case entry, ok := <-w.Updates():
			if !ok {
				return errors.New("status watch ended")
			}
			if entry == nil || entry.Operation() != jetstream.KeyValuePut {
				continue // the end of the initial values, or a deletion
			}
			latest[entry.Key()] = entry
			var st worker.Status
			if json.Unmarshal(entry.Value(), &st) != nil || st.Node == "" {
				continue
			}
			msgs, err := worker.StatusMessages(e.o.Prefix, st)
			if err != nil {
				continue
			}
			for _, m := range msgs {
				if err := b.Publish(m.Topic, m.Payload, true, 1); err != nil {
					e.log.Warn("publish status", "topic", m.Topic, "error", err)
				}
			}
		case now := <-check.C:
			for key, entry := range latest {
				var st worker.Status
				if json.Unmarshal(entry.Value(), &st) != nil || st.State != "online" || now.Sub(entry.Created()) < statusStale {
					continue
				}
				st.State, st.Since = "offline", now.UTC().Format(time.RFC3339)
				v, err := json.Marshal(st)
				if err != nil {
					continue
				}
				// Only if nobody refreshed it meanwhile; the update comes
				// back through the watch.
				if _, err := e.status.Update(ctx, key, v, entry.Revision()); err == nil {
					e.log.Warn("node stopped refreshing its status: marked offline", "node", key)
				}
			}
		}
	}
}
