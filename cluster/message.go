package cluster

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
)

// The headers of the request and result messages. The body of a request
// message is the request's payload as the device sent it; that of a result
// message is the reply's payload as the device gets it.
const (
	hdrTopic       = "Mqttinfer-Topic"        // request: its topic; result: where it is published
	hdrQoS         = "Mqttinfer-Qos"          // the request's QoS, which its replies keep
	hdrContentType = "Mqttinfer-Content-Type" // MQTT 5 content type
	hdrResponse    = "Mqttinfer-Response"     // request: its vetted MQTT 5 response topic
	hdrCorrelation = "Mqttinfer-Correlation"  // MQTT 5 correlation data, base64
	hdrReceived    = "Mqttinfer-Received"     // when the edge read the request, Unix ns
	hdrRateLimit   = "Mqttinfer-Ratelimit"    // the device's bucket after the request, JSON
	hdrKey         = "Mqttinfer-Key"          // the request's key (its intake message id)
	hdrID          = "Mqttinfer-Id"           // result: the request's id
	hdrStatus      = "Mqttinfer-Status"       // result: its status, 0 for a stream delta
	hdrProps       = "Mqttinfer-Props"        // result: "1" when it carries MQTT 5 properties
	hdrEdge        = "Mqttinfer-Edge"         // request: the node of the edge that took it
	hdrDevice      = "Mqttinfer-Device"       // result: the device it answers
	hdrRequest     = "Mqttinfer-Request"      // result: the topic of the request it answers
)

// requestKey is the intake message id of an accepted request: a request
// with an id of its device's is known by its device, model and id, so that
// a copy the device sends again (a QoS 1 publish repeated after an edge
// died before its PUBACK) is dropped by the stream's deduplication; one
// without an id (every copy a new request to its device) by the edge that
// took it and a number.
func requestKey(r *pipeline.Request, ownID bool, edge string, n uint64) string {
	if r.Body.Cancel {
		return "cancel/" + r.Topic.Device + "/" + r.Topic.Model + "/" + r.Body.ID
	}
	if ownID {
		return "id/" + r.Topic.Version + "/" + r.Topic.Device + "/" + r.Topic.Model + "/" + r.Body.ID
	}
	return "edge/" + edge + "/" + strconv.FormatUint(n, 10)
}

// requestMsg is the message that carries an accepted request.
func requestMsg(subject string, r *pipeline.Request, key, edge string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = r.Payload
	h := m.Header
	h.Set(nats.MsgIdHdr, key)
	h.Set(hdrKey, key)
	h.Set(hdrTopic, r.Topic.String())
	h.Set(hdrQoS, strconv.Itoa(int(r.QoS)))
	h.Set(hdrReceived, strconv.FormatInt(r.Received.UnixNano(), 10))
	h.Set(hdrEdge, edge)
	if r.ContentType != "" {
		h.Set(hdrContentType, r.ContentType)
	}
	if r.ResponseTopic != "" {
		h.Set(hdrResponse, r.ResponseTopic)
	}
	if r.CorrelationData != nil {
		h.Set(hdrCorrelation, base64.StdEncoding.EncodeToString(r.CorrelationData))
	}
	if r.RateLimit != nil {
		if b, err := json.Marshal(r.RateLimit); err == nil {
			h.Set(hdrRateLimit, string(b))
		}
	}
	return m
}

var errBadMessage = errors.New("not a request message")

// parseRequest is the request a message carries, not yet admitted (its
// body is not decoded), and its key.
func parseRequest(prefix string, m *nats.Msg) (*pipeline.Request, string, error) {
	h := m.Header
	key := h.Get(hdrKey)
	t, err := topics.Parse(prefix, h.Get(hdrTopic))
	if err != nil || key == "" || t.Kind != topics.KindRequest {
		return nil, "", fmt.Errorf("%w: topic %q, key %q: %v", errBadMessage, h.Get(hdrTopic), key, err)
	}
	qos, _ := strconv.Atoi(h.Get(hdrQoS))
	r := &pipeline.Request{
		Topic:         t,
		Payload:       m.Data,
		QoS:           byte(min(max(qos, 0), 2)),
		Received:      receivedAt(h),
		ContentType:   h.Get(hdrContentType),
		ResponseTopic: pipeline.VetResponseTopic(t, h.Get(hdrResponse)),
	}
	if r.Received.IsZero() {
		r.Received = time.Now()
	}
	if c := h.Get(hdrCorrelation); c != "" {
		r.CorrelationData, _ = base64.StdEncoding.DecodeString(c)
	}
	r.RateLimit = rateLimitOf(h)
	return r, key, nil
}

// receivedAt is when the edge read the request a message carries (or
// answers); zero when it does not say.
func receivedAt(h nats.Header) time.Time {
	ns, _ := strconv.ParseInt(h.Get(hdrReceived), 10, 64)
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// rateLimitOf is the device's bucket a request or result message carries,
// as admitting the request left it; nil when it carries none.
func rateLimitOf(h nats.Header) *api.RateLimit {
	rl := h.Get(hdrRateLimit)
	if rl == "" {
		return nil
	}
	var l api.RateLimit
	if json.Unmarshal([]byte(rl), &l) != nil {
		return nil
	}
	return &l
}

// resultMsg is the message that carries reply n (0, 1, ... in the order
// they are sent) to the request r with key key. Its message id makes the
// stream drop a second copy of the same reply: a request run again after
// its worker died between publishing the result and acking the request
// is not answered twice.
func resultMsg(subject string, r *pipeline.Request, key string, n int, p pipeline.Reply, qos byte) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = p.Payload
	h := m.Header
	h.Set(nats.MsgIdHdr, key+"#"+strconv.Itoa(n))
	h.Set(hdrKey, key)
	h.Set(hdrID, r.ID())
	h.Set(hdrDevice, r.Topic.Device)
	h.Set(hdrRequest, r.Topic.String())
	h.Set(hdrTopic, p.Topic)
	h.Set(hdrQoS, strconv.Itoa(int(qos)))
	h.Set(hdrStatus, strconv.Itoa(p.Status))
	h.Set(hdrReceived, strconv.FormatInt(r.Received.UnixNano(), 10))
	if p.Properties {
		h.Set(hdrProps, "1")
		h.Set(hdrContentType, p.ContentType)
		if p.CorrelationData != nil {
			h.Set(hdrCorrelation, base64.StdEncoding.EncodeToString(p.CorrelationData))
		}
	}
	if r.RateLimit != nil {
		if b, err := json.Marshal(r.RateLimit); err == nil {
			h.Set(hdrRateLimit, string(b))
		}
	}
	return m
}

// result is a result message, read back.
type result struct {
	reply   pipeline.Reply
	qos     byte
	device  string
	request string // the request's topic
	key, id string
}

func parseResult(m jsMsg) (result, error) {
	h := m.Headers()
	topic := h.Get(hdrTopic)
	if topic == "" {
		return result{}, errors.New("result message without a topic")
	}
	status, _ := strconv.Atoi(h.Get(hdrStatus))
	qos, _ := strconv.Atoi(h.Get(hdrQoS))
	res := result{
		reply:   pipeline.Reply{Topic: topic, Payload: m.Data(), Status: status},
		qos:     byte(min(max(qos, 0), 2)),
		device:  h.Get(hdrDevice),
		request: h.Get(hdrRequest),
		key:     h.Get(hdrKey),
		id:      h.Get(hdrID),
	}
	if h.Get(hdrProps) == "1" {
		res.reply.Properties = true
		res.reply.ContentType = h.Get(hdrContentType)
		if c := h.Get(hdrCorrelation); c != "" {
			res.reply.CorrelationData, _ = base64.StdEncoding.DecodeString(c)
		}
	}
	return res, nil
}

// jsMsg is what parseResult needs of a message: a consumed one
// (jetstream.Msg) or one read directly (jetstream.RawStreamMsg, wrapped).
type jsMsg interface {
	Headers() nats.Header
	Data() []byte
}
