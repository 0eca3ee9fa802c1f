// Package cluster runs mqttinfer on a NATS JetStream backbone: edges (the
// embedded broker, the device door) put accepted requests into a replicated
// stream partitioned by device; workers own the partitions through
// JetStream consumers with a pinned client each and put results into a
// second stream; every edge delivers the results to the devices and
// watchers connected to it, and a device that moved to another edge gets
// the results it missed there.
//
// Subjects, streams and buckets are named after the service's topic
// prefix (Names), so that several services can share one NATS cluster.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqttinfer/mqttinfer/topics"
)

// Defaults of Options.
const (
	DefaultPartitions  = 32
	DefaultResultTTL   = 10 * time.Minute
	DefaultDedupWindow = 2 * time.Minute
	DefaultMaxQueued   = 4096
)

// priorityGroup is the consumers' one priority group: its pinned client
// is the worker that owns the partition.
const priorityGroup = "owner"

// Tunings of the partitions' consumers. A worker keeps a pull request
// open on each partition it owns, renewed every pullExpiry, so that its pin
// (kept pinnedTTL after the last request) never lapses while it lives; a
// worker that dies loses its pins within pinnedTTL, or at once when the
// others see it gone and unpin its partitions.
const (
	pinnedTTL     = 5 * time.Second
	pullExpiry    = time.Second
	ackWait       = 30 * time.Second
	maxAckPending = 256
)

// Options are the settings every node of one cluster must agree on.
type Options struct {
	// Prefix is the service's topic prefix.
	Prefix string
	// Partitions is how many partitions the devices are spread over (and
	// the most workers that can share the load).
	Partitions int
	// Replicas is how many NATS servers keep each stream (1, 3 or 5);
	// 0 picks 3 on a cluster and 1 on a single server.
	Replicas int
	// ResultTTL is how long a result is kept for a device that reconnects.
	ResultTTL time.Duration
	// DedupWindow is how long a request's or result's message id is
	// remembered: a copy inside the window is dropped.
	DedupWindow time.Duration
	// MaxQueued is how many requests may wait in the request stream: past
	// it, edges answer new requests 503 at once rather than let them wait
	// past their deadlines.
	MaxQueued int
}

func (o Options) withDefaults() Options {
	if o.Partitions <= 0 {
		o.Partitions = DefaultPartitions
	}
	if o.ResultTTL <= 0 {
		o.ResultTTL = DefaultResultTTL
	}
	if o.DedupWindow <= 0 {
		o.DedupWindow = DefaultDedupWindow
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	return o
}

// Names are the NATS names of one service (one topic prefix).
type Names struct {
	ns string // the prefix as a subject token and name part
}

// NamesFor returns the names of the service with topic prefix prefix.
func NamesFor(prefix string) Names { return Names{ns: token(prefix)} }

// token makes s a valid NATS subject token and stream name part: characters
// outside [A-Za-z0-9_-] become '_', and then a hash of s keeps two
// prefixes apart that differ only there.
func token(s string) string {
	var b strings.Builder
	changed := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
			changed = true
		}
	}
	if changed {
		h := fnv.New32a()
		h.Write([]byte(s))
		fmt.Fprintf(&b, "_%08x", h.Sum32())
	}
	return b.String()
}

// RequestStream is the stream of accepted requests.
func (n Names) RequestStream() string { return "MQTTINFER_" + n.ns + "_REQ" }

// ResultStream is the stream of results.
func (n Names) ResultStream() string { return "MQTTINFER_" + n.ns + "_RES" }

// CursorBucket is the key-value bucket of the devices' delivery cursors.
func (n Names) CursorBucket() string { return "MQTTINFER_" + n.ns + "_CURSORS" }

// StatusBucket is the key-value bucket of the nodes' statuses.
func (n Names) StatusBucket() string { return "MQTTINFER_" + n.ns + "_STATUS" }

// RequestSubject is the subject of a device's requests, in its partition
// p: the device's last request still queued can be read directly (an edge
// that takes over a device restores its throttle bucket from it).
func (n Names) RequestSubject(p int, device string) string {
	return n.partition(p) + DeviceToken(device)
}

// PartitionSubjects is the filter of partition p's requests.
func (n Names) PartitionSubjects(p int) string { return n.partition(p) + "*" }

func (n Names) partition(p int) string { return "mqttinfer." + n.ns + ".req." + strconv.Itoa(p) + "." }

func (n Names) requestSubjects() string { return "mqttinfer." + n.ns + ".req.*.*" }

// ResultSubject is the subject of a device's results.
func (n Names) ResultSubject(device string) string {
	return "mqttinfer." + n.ns + ".res." + DeviceToken(device)
}

func (n Names) resultSubjects() string { return "mqttinfer." + n.ns + ".res.*" }

// MembersSubject is where the workers announce themselves.
func (n Names) MembersSubject() string { return "mqttinfer." + n.ns + ".workers" }

// Consumer is the name of partition p's consumer.
func (n Names) Consumer(p int) string { return "p" + strconv.Itoa(p) }

// DeviceToken is a device id as a subject token: device ids are
// [A-Za-z0-9._-], and '.' separates tokens, so it becomes '~' (which no
// device id has).
func DeviceToken(device string) string { return strings.ReplaceAll(device, ".", "~") }

// Partition is the partition of a device among n: an FNV-1a hash of its
// id, mixed (FNV's low bits alone follow the low bits of the bytes).
func Partition(device string, n int) int {
	return int(topics.Hash(device) % uint64(n))
}

// metaPartitions is the request stream's metadata key for the partition
// count, metaLayout the one for its subjects' layout (layout: one subject
// per partition and device; before it had none, one per partition).
const (
	metaPartitions = "mqttinfer_partitions"
	metaLayout     = "mqttinfer_layout"
	layout         = "2"
)

// Setup creates the streams, consumers and bucket of o's service, or
// updates them to o; every edge and worker calls it when it starts. It
// refuses to change the partition count of a service whose streams exist
// (the requests already queued would end up in the wrong partitions).
func Setup(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, o Options) (Options, error) {
	o = o.withDefaults()
	if o.Replicas <= 0 {
		o.Replicas = 1
		if nc.ConnectedClusterName() != "" {
			o.Replicas = 3
		}
	}
	n := NamesFor(o.Prefix)
	if s, err := js.Stream(ctx, n.RequestStream()); err == nil {
		info := s.CachedInfo()
		if got := info.Config.Metadata[metaPartitions]; got != "" && got != strconv.Itoa(o.Partitions) {
			return o, configError{fmt.Errorf("cluster.partitions is %d, but the service's streams on this NATS cluster were made with %s: use the same on every node (or delete stream %s when it is empty)",
				o.Partitions, got, n.RequestStream())}
		}
		if info.Config.Metadata[metaLayout] != layout && info.State.Msgs > 0 {
			return o, configError{fmt.Errorf("stream %s holds %d requests queued by an older mqttinfer, whose subjects this one does not read: let the older workers finish them first",
				n.RequestStream(), info.State.Msgs)}
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return o, fmt.Errorf("look up stream %s: %w", n.RequestStream(), err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        n.RequestStream(),
		Description: "mqttinfer: accepted requests of prefix " + o.Prefix + ", one subject per partition",
		Subjects:    []string{n.requestSubjects()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DedupWindow,
		MaxMsgs:     int64(o.MaxQueued),
		Discard:     jetstream.DiscardNew,
		Metadata:    map[string]string{metaPartitions: strconv.Itoa(o.Partitions), metaLayout: layout},
	}); err != nil {
		return o, fmt.Errorf("create stream %s: %w", n.RequestStream(), err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        n.ResultStream(),
		Description: "mqttinfer: results of prefix " + o.Prefix + ", one subject per device",
		Subjects:    []string{n.resultSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		MaxAge:      o.ResultTTL,
		Duplicates:  min(o.DedupWindow, o.ResultTTL),
		AllowDirect: true,
	}); err != nil {
		return o, fmt.Errorf("create stream %s: %w", n.ResultStream(), err)
	}
	for p := range o.Partitions {
		if _, err := js.CreateOrUpdateConsumer(ctx, n.RequestStream(), jetstream.ConsumerConfig{
			Durable:        n.Consumer(p),
			Description:    "mqttinfer: partition " + strconv.Itoa(p) + ", served by its pinned worker",
			FilterSubject:  n.PartitionSubjects(p),
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        ackWait,
			MaxAckPending:  maxAckPending,
			DeliverPolicy:  jetstream.DeliverAllPolicy,
			Replicas:       o.Replicas,
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PinnedTTL:      pinnedTTL,
			PriorityGroups: []string{priorityGroup},
		}); err != nil {
			return o, fmt.Errorf("create consumer %s of %s: %w", n.Consumer(p), n.RequestStream(), err)
		}
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      n.CursorBucket(),
		Description: "mqttinfer: the last result each device of prefix " + o.Prefix + " received",
		TTL:         o.ResultTTL,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	}); err != nil {
		return o, fmt.Errorf("create bucket %s: %w", n.CursorBucket(), err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      n.StatusBucket(),
		Description: "mqttinfer: the status of each edge and worker of prefix " + o.Prefix,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	}); err != nil {
		return o, fmt.Errorf("create bucket %s: %w", n.StatusBucket(), err)
	}
	return o, nil
}

// Connect connects to the NATS servers urls (comma-separated) as name. The
// connection reconnects for ever, to any server of the cluster, quickly:
// a node that lost its server is back within moments.
func Connect(urls, name string, log *slog.Logger) (*nats.Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nc, err := nats.Connect(urls,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.PingInterval(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			log.Warn("NATS", "error", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", urls, err)
	}
	return nc, nil
}

// setupRetry is Setup followed by then (the caller's look-ups of what Setup
// made), both tried again (retry, 5 s a try) until ctx ends while the
// cluster is not ready yet (not connected, JetStream electing its leaders).
func setupRetry(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, o Options, log *slog.Logger, then func(context.Context, Options) error) (Options, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var got Options
	err := retry(ctx, 5*time.Second, 500*time.Millisecond, isConfigError, func(ctx context.Context) error {
		var err error
		if got, err = Setup(ctx, nc, js, o); err == nil && then != nil {
			err = then(ctx, got)
		}
		if err != nil && !isConfigError(err) {
			log.Info("waiting for NATS JetStream", "error", err)
		}
		return err
	})
	if err != nil && !isConfigError(err) {
		err = fmt.Errorf("NATS JetStream not ready: %w", err)
	}
	return got, err
}

// retry calls f, each time with at most try of ctx, until it succeeds or
// fails with an error that final says waiting will not mend, pausing pause
// between calls; when ctx ends it returns the last error. The cluster's
// requests are retried so while a NATS server is replaced or JetStream
// elects a leader: a request that is never answered costs one try, not the
// caller's whole time.
func retry(ctx context.Context, try, pause time.Duration, final func(error) bool, f func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, try)
		err := f(actx)
		cancel()
		if err == nil || final(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
	}
}

// isAPIError reports whether JetStream answered err (a refusal, such as a
// full stream), which asking again does not change.
func isAPIError(err error) bool {
	var e *jetstream.APIError
	return errors.As(err, &e)
}

// configError is a Setup error that waiting does not mend.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

func isConfigError(err error) bool {
	var c configError
	return errors.As(err, &c)
}

// QueueSize is how many requests a worker may have taken and not
// acknowledged at most (every partition's consumer limit): its pool's
// queue must hold as many, so that it never refuses one it took.
func QueueSize(o Options) int { return o.withDefaults().Partitions * maxAckPending }
