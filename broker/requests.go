package broker

import (
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Canceler is implemented by dispatchers that can cancel a queued or running
// request; it reports whether there was one.
type Canceler interface {
	Cancel(device, id string) bool
}

// Dispatcher takes accepted requests off the broker's read path. Dispatch
// blocks its publisher's connection (not the broker): it returns at once,
// or once the request is stored where it cannot be lost (the journal, a
// cluster's request stream), and the broker PUBACKs the request only then.
// When it cannot take the request it returns an error, an *api.Error to
// send as it is, or any other error for 503 overloaded. Replies go back
// through Broker.Send.
type Dispatcher interface {
	Dispatch(r *pipeline.Request) error
}

// requestHook applies the service's rules to every request publish: the
// sender's identity, then admission (size, body, model, throttle; the
// pipeline every transport shares), then the hand-off to the dispatcher or
// the remote workers. A request refused on the way never reaches a worker
// and is answered on the sender's own result topic.
type requestHook struct {
	mqtt.HookBase
	b    *Broker
	auth *authHook
	adm  *pipeline.Admission
}

func newRequestHook(b *Broker, auth *authHook) *requestHook {
	adm := &pipeline.Admission{
		MaxSize:  b.opts.MaxRequestSize,
		Limit:    b.opts.RequestLimit,
		HasModel: b.opts.HasModel,
		Models:   b.opts.Models,
		Throttle: b.opts.Throttle,
		Metrics:  b.opts.Metrics,
	}
	if adm.HasModel == nil && adm.Models != nil {
		adm.HasModel = func(name string) bool {
			for _, m := range adm.Models() {
				if m == name {
					return true
				}
			}
			return false
		}
	}
	return &requestHook{b: b, auth: auth, adm: adm}
}

func (h *requestHook) ID() string { return "mqttinfer-requests" }

func (h *requestHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// inbound is a request publish with what the hook knows of its sender.
type inbound struct {
	cl     *mqtt.Client
	pk     packets.Packet
	sender string
	r      *pipeline.Request
}

// v5 reports whether the sender speaks MQTT 5 (and so may send properties).
func (in *inbound) v5() bool { return in.cl.Properties.ProtocolVersion == 5 }

// OnPublish returns packets.CodeSuccessIgnore for every request it answers
// or hands to the dispatcher: the publisher gets its PUBACK and the message
// goes no further. packets.ErrRejectPacket is never used: it would leave a
// QoS 1 publisher without a PUBACK.
func (h *requestHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the service's own publishes
	}
	t, err := topics.Parse(h.b.opts.Prefix, pk.TopicName)
	if errors.Is(err, topics.ErrOutside) {
		return pk, nil
	}
	if t.Kind != topics.KindRequest {
		if err != nil && !errors.Is(err, topics.ErrUnsupportedVersion) {
			h.b.opts.Metrics.Rejected("bad_topic")
			h.b.log.Debug("publish on a malformed topic under the prefix dropped", "client", cl.ID, "topic", pk.TopicName, "error", err)
			return pk, packets.CodeSuccessIgnore
		}
		if err == nil && (t.Kind == topics.KindResult || t.Kind == topics.KindSent) {
			h.countRemote(t, pk)
		}
		return pk, nil // results, catalog and status from workers: the ACL decided
	}

	in := &inbound{cl: cl, pk: pk, sender: h.auth.senderID(cl), r: &pipeline.Request{
		Topic:    t,
		Payload:  pk.Payload,
		QoS:      pk.FixedHeader.Qos,
		Received: time.Now(),
	}}
	if in.v5() {
		in.r.ContentType = pk.Properties.ContentType
		in.r.CorrelationData = pk.Properties.CorrelationData
	}
	switch {
	case errors.Is(err, topics.ErrUnsupportedVersion):
		e := api.Errorf(api.UnsupportedVersion, "API version %q is not supported", t.Version)
		e.Versions = topics.Versions()
		return h.reject(in, e)
	case err != nil:
		return h.reject(in, api.Errorf(api.InvalidRequest, "request topic: %v", err))
	}
	if e := checkIdentity(in.sender, t); e != nil {
		return h.reject(in, e)
	}
	in.r.ResponseTopic = in.responseTopic()
	if e := h.adm.Admit(in.r); e != nil {
		return h.reject(in, e)
	}
	return h.handOff(in)
}

// countRemote counts a remote worker's final reply as it passes: a result
// on a result topic, or the sent record of one that went to an MQTT 5
// response topic (the two never both exist for one reply).
func (h *requestHook) countRemote(t topics.Topic, pk packets.Packet) {
	ct := ""
	if t.Kind == topics.KindResult {
		ct = pk.Properties.ContentType
	}
	if r, ok := api.PeekReply(pk.Payload, ct); ok && r.Final() {
		h.b.opts.Metrics.RemoteRequest(t.Version, t.Model, r.Status)
	}
}

// checkIdentity enforces that a device publishes requests only under its
// own id: the MQTT client id, or the username when auth is on.
func checkIdentity(sender string, t topics.Topic) *api.Error {
	if err := topics.ValidID(sender); err != nil {
		return api.Errorf(api.Forbidden, "sender id %q cannot publish requests: %v", sender, err)
	}
	if t.Device != sender {
		return api.Errorf(api.Forbidden, "device id %q in the topic is not the sender %q: publish on %s",
			t.Device, sender, topics.Request(t.Prefix, t.Version, sender, t.Model))
	}
	return nil
}

// responseTopic is the MQTT 5 response topic the request asked for, when
// the service may publish there (pipeline.VetResponseTopic), else "".
func (in *inbound) responseTopic() string {
	if !in.v5() {
		return ""
	}
	return pipeline.VetResponseTopic(in.r.Topic, in.pk.Properties.ResponseTopic)
}

// handOff gives an accepted request to the dispatcher, or lets it through to
// the remote workers' subscriptions. Exactly one of the two consumes it.
func (h *requestHook) handOff(in *inbound) (packets.Packet, error) {
	r := in.r
	if r.Body.Cancel {
		return h.cancel(in)
	}
	if d := h.b.opts.Dispatcher; d != nil {
		if err := d.Dispatch(r); err != nil {
			r.Refund()
			r.Done()
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
	r.Done()
	switch workers, full := h.b.workerQueues(in.pk.TopicName); {
	case workers == 0:
		r.Refund()
		return h.reject(in, api.Errorf(api.ModelUnavailable, "no worker is serving requests: none is subscribed to %s", topics.RequestFilter(h.b.opts.Prefix)))
	case full != "":
		// The broker would drop the request on its way to that worker:
		// refused here instead, so that the device knows and retries.
		r.Refund()
		return h.reject(in, api.Errorf(api.Overloaded, "the workers are behind: worker %s has as many requests on their way as it can take", full))
	}
	// The workers answer on the response topic the request carries: only
	// a vetted one goes on (a device must not make a worker publish into
	// others' topics).
	in.pk.Properties.ResponseTopic = r.ResponseTopic
	return in.pk, nil
}

// cancel hands a device's cancel request to the dispatcher; the canceled
// request itself is then answered 499. Without a dispatcher the cancel goes
// on to the remote workers; a dispatcher that is no Canceler gets it as a
// request, to pass on.
func (h *requestHook) cancel(in *inbound) (packets.Packet, error) {
	d := h.b.opts.Dispatcher
	c, ok := d.(Canceler)
	if !ok {
		if d == nil {
			in.pk.Properties.ResponseTopic = in.r.ResponseTopic
			return in.pk, nil
		}
		// A dispatcher that cannot cancel here hands the cancel on to
		// whoever runs the request (a cluster's workers).
		if err := d.Dispatch(in.r); err != nil {
			var e *api.Error
			if !errors.As(err, &e) {
				e = api.Errorf(api.Overloaded, "the service is out of capacity: %v", err)
			}
			return h.reject(in, e)
		}
		return in.pk, packets.CodeSuccessIgnore
	}
	if !c.Cancel(in.sender, in.r.Body.ID) {
		return h.reject(in, api.Errorf(api.InvalidRequest, "no queued or running request with id %q to cancel", in.r.Body.ID))
	}
	return in.pk, packets.CodeSuccessIgnore
}

// reject answers a request with an error on the sender's own result topic.
func (h *requestHook) reject(in *inbound, e *api.Error) (packets.Packet, error) {
	r := in.r
	// The reply goes to the sender's own topic under the request's version;
	// without a valid sender, model or version level there is no topic to
	// answer on, and the drop is only counted.
	if topics.ValidID(in.sender) != nil || topics.ValidID(r.Topic.Model) != nil || topics.ValidID(r.Topic.Version) != nil {
		h.b.opts.Metrics.Rejected(string(e.Type))
		h.b.log.Debug("request dropped without reply", "client", in.cl.ID, "topic", in.pk.TopicName, "error", e)
		h.b.opts.Metrics.Rejected("unanswerable")
		return in.pk, packets.CodeSuccessIgnore
	}
	r.Topic.Device = in.sender
	r.ResponseTopic = in.responseTopic()
	if reply, err := h.adm.ErrorReply(r, e); err != nil {
		h.b.log.Error("encode reply", "error", err)
	} else if err := h.b.Send(reply, r.QoS); err != nil {
		h.b.log.Warn("publish reply", "device", in.sender, "error", err)
	}
	if e.Type == api.RateLimited && in.v5() && r.QoS > 0 {
		return in.pk, packets.ErrQuotaExceeded // PUBACK 0x97
	}
	return in.pk, packets.CodeSuccessIgnore
}
