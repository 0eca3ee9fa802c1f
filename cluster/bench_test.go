package cluster

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/internal/testenv"
)

// BenchmarkBackbone: one request's trip over the backbone and back, on a
// 3-node NATS cluster in this process, the durable way the cluster goes
// (the request stored in an R3 stream and acknowledged, taken by the
// partition's pinned worker, its result stored in an R3 stream, the
// request acknowledged, the result read by the edge) against core NATS
// request/reply (nothing stored). b.N round trips one after the other:
// ns/op is the latency; make bench prints the ratio.
func BenchmarkBackbone(b *testing.B) {
	payload := []byte(`{"id":"r-1","input":{"sensor":"temp","value":21.5}}`)
	c := testenv.StartNATS(b, 3)
	nc, err := nats.Connect(c.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()

	b.Run("core", func(b *testing.B) {
		sub, err := nc.Subscribe("bench.core", func(m *nats.Msg) { _ = m.Respond(m.Data) })
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Unsubscribe()
		for b.Loop() {
			if _, err := nc.Request("bench.core", payload, 5*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("jetstream", func(b *testing.B) {
		js, err := jetstream.New(nc)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		o, err := setupRetry(ctx, nc, js, Options{Prefix: "bench", Partitions: 1, Replicas: 3}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		n := NamesFor(o.Prefix)
		reqs, err := js.Stream(ctx, n.RequestStream())
		if err != nil {
			b.Fatal(err)
		}
		cons, err := reqs.Consumer(ctx, n.Consumer(0))
		if err != nil {
			b.Fatal(err)
		}
		// The worker: take, store the result, acknowledge.
		it, err := cons.Messages(jetstream.PullPriorityGroup(priorityGroup), jetstream.PullExpiry(pullExpiry))
		if err != nil {
			b.Fatal(err)
		}
		defer it.Stop()
		go func() {
			for {
				m, err := it.Next()
				if err != nil {
					return
				}
				res := nats.NewMsg(n.ResultSubject("dev"))
				res.Data = m.Data()
				res.Header.Set(nats.MsgIdHdr, m.Headers().Get(nats.MsgIdHdr)+"#0")
				if _, err := js.PublishMsg(ctx, res); err == nil {
					_ = m.Ack()
				}
			}
		}()
		// The edge: its pump reads the results.
		info, err := js.Stream(ctx, n.ResultStream())
		if err != nil {
			b.Fatal(err)
		}
		si, err := info.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		oc, err := js.OrderedConsumer(ctx, n.ResultStream(), jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: si.State.LastSeq + 1})
		if err != nil {
			b.Fatal(err)
		}
		results, err := oc.Messages()
		if err != nil {
			b.Fatal(err)
		}
		defer results.Stop()
		i := 0
		for b.Loop() {
			i++
			m := nats.NewMsg(n.RequestSubject(0, "bench"))
			m.Data = payload
			m.Header.Set(nats.MsgIdHdr, "bench/"+strconv.Itoa(i)+"/"+strconv.FormatInt(time.Now().UnixNano(), 36))
			if _, err := js.PublishMsg(ctx, m); err != nil {
				b.Fatal(err)
			}
			if _, err := results.Next(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
