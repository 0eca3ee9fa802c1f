package pipeline

import (
	"strings"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// DefaultMaxSize is the request size limit of an Admission whose MaxSize is 0.
const DefaultMaxSize = 64 << 10

// Admission decides whether a request may be run: its size, its body, its
// model, and the device's throttle. Every transport admits requests with
// it, in the order they arrived, before they queue. Its zero value admits
// any well-formed request of up to DefaultMaxSize bytes.
type Admission struct {
	// MaxSize is the largest body, in bytes, of a model without a limit of
	// its own; larger ones are 413. 0 means DefaultMaxSize.
	MaxSize int
	// Limit returns a model's own request size limit in bytes, 0 for none;
	// nil means none has one.
	Limit func(model string) int
	// HasModel reports whether a model is served; nil skips the check (the
	// worker's core answers 404 then). Models lists them for the 404.
	HasModel func(name string) bool
	Models   func() []string
	// Throttle charges each request to its device's bucket and in-flight
	// limit; nil throttles nothing.
	Throttle *throttle.Limiter
	// Metrics counts refusals; nil counts nothing.
	Metrics *metrics.Metrics
}

// Admit decodes r's body and checks the request, filling in r.Body (with
// an id: the content's when the device sent none, see api.ContentID) and,
// when it throttles, r.RateLimit. A request it admits has been charged to
// its device: the caller must call r.Done once it is answered, and
// r.Refund if no model runs for it. A cancel is admitted free of charge.
// The error is the reply to send instead (ErrorReply).
func (a *Admission) Admit(r *Request) *api.Error {
	maxSize := a.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if a.Limit != nil {
		if l := a.Limit(r.Topic.Model); l > 0 {
			maxSize = l
		}
	}
	if n := len(r.Payload); n > maxSize {
		return api.Errorf(api.PayloadTooLarge, "request is %d bytes, the limit for model %q is %d", n, r.Topic.Model, maxSize)
	}
	body, e := api.Decode(r.Topic.Version, r.Payload, r.ContentType)
	r.Body = body
	if e != nil {
		return e
	}
	if body.Cancel {
		if body.ID == "" {
			return api.Errorf(api.InvalidRequest, "field \"id\": a cancel must name the request to cancel")
		}
		return nil
	}
	if a.HasModel != nil && !a.HasModel(r.Topic.Model) {
		var names []string
		if a.Models != nil {
			names = a.Models()
		}
		e := api.Errorf(api.ModelNotFound, "model %q does not exist; models: %s", r.Topic.Model, strings.Join(names, ", "))
		e.Models = names
		return e
	}
	if r.Body.ID == "" {
		r.Body.ID = api.ContentID(r.Topic.String(), r.Payload)
	}
	return a.charge(r)
}

// charge takes the request's cost from its device's bucket and an
// in-flight slot, or refuses it with 429 (413 for a batch costlier than
// the bucket can ever hold) and the time to retry.
func (a *Admission) charge(r *Request) *api.Error {
	l := a.Throttle
	if l == nil {
		return nil
	}
	device := r.Device()
	d := l.AllowN(device, r.Topic.Model, len(r.Body.Inputs))
	r.RateLimit = RateLimit(d)
	if d.Reason == throttle.ReasonTooLarge {
		return api.Errorf(api.PayloadTooLarge, "%s", d.Describe(device))
	}
	if !d.Allowed {
		a.Metrics.Throttled(string(d.Reason))
		e := api.Errorf(api.RateLimited, "%s", d.Describe(device))
		e.RetryAfterMS = max(d.RetryAfterMillis(), 1)
		return e
	}
	cost := d.Cost
	r.release = func() { l.Done(device) }
	r.refund = func() { l.Refund(device, cost) }
	r.settle = func(share float64) { l.Settle(device, cost, share) }
	return nil
}

// ErrorReply builds and counts the error reply to r: its id echoed as far
// as it can be read, and the device's ratelimit when it is throttled (a 403
// goes to a sender that is not the device and shows none).
func (a *Admission) ErrorReply(r *Request, e *api.Error) (Reply, error) {
	res := api.ErrorResult(r.ID(), r.Topic.Model, e)
	res.RateLimit = r.RateLimit
	if res.RateLimit == nil && e.Type != api.Forbidden && a.Throttle != nil {
		res.RateLimit = RateLimit(a.Throttle.Peek(r.Device(), r.Topic.Model))
	}
	a.Metrics.Rejected(string(e.Type))
	a.Metrics.Request(r.Topic.Version, r.Topic.Model, res.Status)
	return r.Reply(res, res.Status)
}

// RateLimit converts a throttle decision into the ratelimit object every
// reply carries.
func RateLimit(d throttle.Decision) *api.RateLimit {
	return &api.RateLimit{Limit: d.Limits.Burst, Remaining: d.Remaining, ResetMS: d.ResetMillis()}
}

// PeekRateLimit is the device's ratelimit without charging anything (nil
// when l is nil).
func PeekRateLimit(l *throttle.Limiter, device, model string) *api.RateLimit {
	if l == nil {
		return nil
	}
	return RateLimit(l.Peek(device, model))
}
