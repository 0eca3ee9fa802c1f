// Package pipeline is the request path every transport of mqttinfer shares:
// a request as it arrived (its topic, body and MQTT 5 properties), its
// admission (size, body, model, throttle) and its replies (where they go,
// in which encoding, with which properties). The embedded broker's request
// hook, the in-process pool and the remote worker are adapters around it,
// so that a rule is written once and a device gets the same answers from
// every deployment shape.
package pipeline

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Request is one inference request (or cancel) on its way through the
// service, whichever transport brought it.
type Request struct {
	// Topic is the parsed request topic (version, device, model).
	Topic topics.Topic
	// Payload is the body as received.
	Payload []byte
	// Body is the decoded body (set by Admission.Admit); its ID is set,
	// generated from the content when the device sent none.
	Body api.Request
	// QoS is the publish's QoS; replies go out at the same QoS.
	QoS byte
	// Received is when the service read the request.
	Received time.Time
	// ResponseTopic and CorrelationData are an MQTT 5 request's reply
	// address, already vetted (ResponseTopic): "" means the device's result
	// topic.
	ResponseTopic   string
	CorrelationData []byte
	// ContentType is the MQTT 5 content type of the request ("" for JSON
	// and for MQTT 3.1.1): replies to a CBOR request on v2 are CBOR.
	ContentType string
	// RateLimit is the device's bucket after this request (nil when it is
	// not throttled); every reply echoes it.
	RateLimit *api.RateLimit
	// OnDone, when set, is called by Done, after the in-flight slot is
	// given back (the journal forgets the request then).
	OnDone func()

	// Set by the throttle when it charged the request.
	release func()        // gives back the in-flight slot
	refund  func()        // gives back the tokens
	settle  func(float64) // settles to the share of the cost used
	once    sync.Once
}

// Device is the device the request is for (and from: transports check the
// sender where they can).
func (r *Request) Device() string { return r.Topic.Device }

// Done must be called once the request has been answered (a request that
// was admitted and handed on); it gives back the device's in-flight slot.
// Calling it again does nothing.
func (r *Request) Done() {
	r.once.Do(func() {
		if r.release != nil {
			r.release()
		}
		if r.OnDone != nil {
			r.OnDone()
		}
	})
}

// Refund gives the request's tokens back: it ran no model (the queue was
// full, it was canceled before its turn, it was a copy of one answered).
// Call it at most once, before Done.
func (r *Request) Refund() {
	if r.refund != nil {
		r.refund()
		r.refund = nil
		r.settle = nil
	}
}

// Settle settles the device's bucket to the share of the request's up-front
// cost its metered output used (see inference.Metered). Call it at most once.
func (r *Request) Settle(share float64) {
	if r.settle != nil && share >= 0 {
		r.settle(share)
		r.settle = nil
		r.refund = nil
	}
}

// ReplyTopic is where replies to r go: its vetted MQTT 5 response topic, or
// the device's result topic.
func (r *Request) ReplyTopic() string {
	if r.ResponseTopic != "" {
		return r.ResponseTopic
	}
	return r.Topic.ResultTopic()
}

// ReplyContentType is the content type of the replies to r: CBOR answers
// CBOR on v2; v1 is JSON, always.
func (r *Request) ReplyContentType() string {
	if r.ContentType == api.ContentTypeCBOR && r.Topic.Version != "v1" {
		return api.ContentTypeCBOR
	}
	return "application/json"
}

// Encode encodes a reply (api.Result or api.StreamEvent) to r in its API
// version and content type.
func (r *Request) Encode(v any) ([]byte, error) {
	if r.ReplyContentType() == api.ContentTypeCBOR {
		return api.MarshalCBOR(v)
	}
	return api.Marshal(r.Topic.Version, v)
}

// Reply is one outgoing reply message.
type Reply struct {
	Topic   string
	Payload []byte
	// Status is the reply's status; 0 for a stream's delta event.
	Status int
	// Properties says whether the reply carries MQTT 5 properties: the
	// request asked for a response topic or sent a content type. They are
	// the correlation data, the content type and the status as the user
	// property "status" (StatusProperty).
	Properties      bool
	CorrelationData []byte
	ContentType     string
}

// StatusProperty is the MQTT 5 user property that carries a reply's status.
const StatusProperty = "status"

// Final reports whether the reply ends its request (a result, or a stream's
// done or error event).
func (p Reply) Final() bool { return p.Status != 0 }

// StatusValue is the reply's status as the user property's value.
func (p Reply) StatusValue() string { return strconv.Itoa(p.Status) }

// Reply encodes v (an api.Result or api.StreamEvent with the given status;
// 0 for a delta) as a reply to r.
func (r *Request) Reply(v any, status int) (Reply, error) {
	b, err := r.Encode(v)
	if err != nil {
		return Reply{}, err
	}
	return Reply{
		Topic:           r.ReplyTopic(),
		Payload:         b,
		Status:          status,
		Properties:      r.ResponseTopic != "" || r.ContentType != "",
		CorrelationData: r.CorrelationData,
		ContentType:     r.ReplyContentType(),
	}, nil
}

// ID is the request's id as far as it is known: the decoded one, else the
// one a broken body still shows (api.PeekID), else "".
func (r *Request) ID() string {
	if r.Body.ID != "" {
		return r.Body.ID
	}
	return api.PeekID(r.Payload)
}

// VetResponseTopic returns the MQTT 5 response topic rt of a request on
// topic t when the service may publish there: a topic without wildcards
// outside the prefix and outside the '$' topics, or one of the requesting
// device's own result topics. Anything else gives "" (the reply goes to the
// device's result topic), so that a device cannot make the service publish
// into others' topics.
func VetResponseTopic(t topics.Topic, rt string) string {
	if rt == "" || strings.ContainsAny(rt, "+#") || strings.HasPrefix(rt, "$") {
		return ""
	}
	if !topics.Under(t.Prefix, rt) {
		return rt
	}
	if p, err := topics.Parse(t.Prefix, rt); err == nil && p.Kind == topics.KindResult && p.Device == t.Device {
		return rt
	}
	return ""
}
