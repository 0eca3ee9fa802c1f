package broker

import (
	"errors"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// inbound is a request publish on its way through the request hook's stages.
type inbound struct {
	cl       *mqtt.Client
	pk       packets.Packet
	topic    topics.Topic
	sender   string
	body     api.Request
	received time.Time
	rl       *api.RateLimit // set by the throttle stage
	release  func()         // set by the throttle stage: gives back the in-flight slot
	refund   func()         // set by the throttle stage: gives back the tokens
	settle   func(float64)  // set by the throttle stage: settles to the share of the cost really used
}

// responseTopic is the MQTT 5 response topic the request asked for, when
// the service may publish there: outside the prefix, or one of the
// sender's own result topics. Anything else gets the default result topic,
// so that a device cannot make the service publish into others' topics.
func (in *inbound) responseTopic() string {
	rt := in.pk.Properties.ResponseTopic
	if rt == "" || in.cl.Properties.ProtocolVersion != 5 || strings.ContainsAny(rt, "+#") || strings.HasPrefix(rt, "$") {
		return ""
	}
	if !topics.Under(in.topic.Prefix, rt) {
		return rt
	}
	if t, err := topics.Parse(in.topic.Prefix, rt); err == nil && t.Kind == topics.KindResult && t.Device == in.sender {
		return rt
	}
	return ""
}

// contentType is the MQTT 5 content type of the request ("" for JSON and
// for MQTT 3.1.1, which has none).
func (in *inbound) contentType() string {
	if in.cl.Properties.ProtocolVersion != 5 {
		return ""
	}
	return in.pk.Properties.ContentType
}

// Canceler is implemented by dispatchers that can cancel a queued or running
// request; it reports whether there was one.
type Canceler interface {
	Cancel(device, id string) bool
}

// stage is one concern of the request path. check returns the error to
// answer the request with, or nil to pass it on.
type stage interface {
	check(in *inbound) *api.Error
}

// requestHook applies the service's rules to every request publish: the
// stages in order (identity, validation, throttle), then the hand-off to the
// dispatcher or the remote workers. A request that fails a stage never
// reaches a worker and is answered on the sender's own result topic.
type requestHook struct {
	mqtt.HookBase
	b      *Broker
	auth   *authHook
	stages []stage
}

func newRequestHook(b *Broker, auth *authHook) *requestHook {
	h := &requestHook{b: b, auth: auth}
	h.stages = []stage{
		identityStage{},
		newValidateStage(b.opts),
	}
	if b.opts.Throttle != nil {
		h.stages = append(h.stages, &throttleStage{l: b.opts.Throttle, m: b.opts.Metrics})
	}
	return h
}

func (h *requestHook) ID() string { return "mqttinfer-requests" }

func (h *requestHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish returns packets.CodeSuccessIgnore for every request it answers
// or hands to the dispatcher: the publisher gets its PUBACK and the message
// goes no further. packets.ErrRejectPacket is never used: it would leave a
// QoS 1 publisher without a PUBACK.
func (h *requestHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the service's own publishes
	}
	prefix := h.b.opts.Prefix
	t, err := topics.Parse(prefix, pk.TopicName)
	if errors.Is(err, topics.ErrOutside) {
		return pk, nil
	}
	if t.Kind != topics.KindRequest {
		if err != nil && !errors.Is(err, topics.ErrUnsupportedVersion) {
			h.b.opts.Metrics.Rejected("bad_topic")
			h.b.log.Debug("publish on a malformed topic under the prefix dropped", "client", cl.ID, "topic", pk.TopicName, "error", err)
			return pk, packets.CodeSuccessIgnore
		}
		return pk, nil // results, catalog and status from workers: the ACL decided
	}

	in := &inbound{cl: cl, pk: pk, topic: t, sender: h.auth.senderID(cl), received: time.Now()}
	switch {
	case errors.Is(err, topics.ErrUnsupportedVersion):
		e := api.Errorf(api.UnsupportedVersion, "API version %q is not supported", t.Version)
		e.Versions = topics.Versions()
		return h.reject(in, e)
	case err != nil:
		return h.reject(in, api.Errorf(api.InvalidRequest, "request topic: %v", err))
	}
	for _, s := range h.stages {
		if e := s.check(in); e != nil {
			return h.reject(in, e)
		}
	}
	return h.handOff(in)
}

// handOff gives an accepted request to the dispatcher, or lets it through to
// the remote workers' shared subscription. Exactly one of the two consumes it.
func (h *requestHook) handOff(in *inbound) (packets.Packet, error) {
	release := in.release
	if release == nil {
		release = func() {}
	}
	if in.body.Cancel {
		return h.cancel(in)
	}
	if d := h.b.opts.Dispatcher; d != nil {
		settle := func(float64) {}
		if in.settle != nil {
			settle = in.settle
		}
		r := &Request{
			Topic:           in.topic,
			Body:            in.body,
			QoS:             in.pk.FixedHeader.Qos,
			Received:        in.received,
			RateLimit:       in.rl,
			Done:            sync.OnceFunc(release),
			Settle:          settle,
			ProtocolVersion: in.cl.Properties.ProtocolVersion,
			ResponseTopic:   in.responseTopic(),
			CorrelationData: in.pk.Properties.CorrelationData,
			ContentType:     in.contentType(),
		}
		if err := d.Dispatch(r); err != nil {
			release()
			if in.refund != nil {
				in.refund()
			}
			var e *api.Error
			if !errors.As(err, &e) {
				e = api.Errorf(api.Overloaded, "the service is out of capacity: %v", err)
			}
			return h.reject(in, e)
		}
		return in.pk, packets.CodeSuccessIgnore
	}
	// Remote workers: the broker cannot see when they finish, so the
	// in-flight slot is released now and only the rate applies.
	release()
	if !h.b.HasSubscribers(in.pk.TopicName) {
		if in.refund != nil {
			in.refund()
		}
		return h.reject(in, api.Errorf(api.ModelUnavailable, "no worker is serving requests: none is subscribed to %s", topics.RequestFilter(h.b.opts.Prefix)))
	}
	return in.pk, nil
}

// cancel hands a device's cancel request to the dispatcher; the canceled
// request itself is then answered 499. Without a dispatcher the cancel goes
// on to the remote workers.
func (h *requestHook) cancel(in *inbound) (packets.Packet, error) {
	c, ok := h.b.opts.Dispatcher.(Canceler)
	if !ok {
		if h.b.opts.Dispatcher == nil {
			return in.pk, nil
		}
		return h.reject(in, api.Errorf(api.InvalidRequest, "this service cannot cancel requests"))
	}
	if !c.Cancel(in.sender, in.body.ID) {
		return h.reject(in, api.Errorf(api.InvalidRequest, "no queued or running request with id %q to cancel", in.body.ID))
	}
	return in.pk, packets.CodeSuccessIgnore
}

// reject answers a request with an error on the sender's own result topic.
func (h *requestHook) reject(in *inbound, e *api.Error) (packets.Packet, error) {
	m := h.b.opts.Metrics
	m.Rejected(string(e.Type))
	// The reply goes to the sender's own topic under the request's version;
	// without a valid sender, model or version level there is no topic to
	// answer on, and the drop is only counted.
	if topics.ValidID(in.sender) != nil || topics.ValidID(in.topic.Model) != nil || topics.ValidID(in.topic.Version) != nil {
		h.b.log.Debug("request dropped without reply", "client", in.cl.ID, "topic", in.pk.TopicName, "error", e)
		m.Rejected("unanswerable")
		return in.pk, packets.CodeSuccessIgnore
	}
	id := in.body.ID
	if id == "" {
		id = api.PeekID(in.pk.Payload)
	}
	res := api.ErrorResult(id, in.topic.Model, e)
	res.RateLimit = in.rl
	if res.RateLimit == nil && e.Type != api.Forbidden && h.b.opts.Throttle != nil {
		res.RateLimit = peekRateLimit(h.b.opts.Throttle, in.sender, in.topic.Model)
	}
	h.b.opts.Metrics.Request(in.topic.Version, in.topic.Model, res.Status)
	if payload, err := encodeReply(in.topic.Version, in.contentType(), res); err != nil {
		h.b.log.Error("encode reply", "error", err)
	} else {
		topic, rt := topics.Result(h.b.opts.Prefix, in.topic.Version, in.sender, in.topic.Model), in.responseTopic()
		if rt != "" {
			topic = rt
		}
		ct := replyContentType(in.topic.Version, in.contentType())
		if err := h.b.publish(topic, payload, in.pk.FixedHeader.Qos, in.pk.Properties.CorrelationData, rt != "", ct, res.Status); err != nil {
			h.b.log.Warn("publish reply", "device", in.sender, "error", err)
		}
	}
	if e.Type == api.RateLimited && in.cl.Properties.ProtocolVersion == 5 && in.pk.FixedHeader.Qos > 0 {
		return in.pk, packets.ErrQuotaExceeded // PUBACK 0x97
	}
	return in.pk, packets.CodeSuccessIgnore
}
