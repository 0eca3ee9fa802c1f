package broker

import (
	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/metrics"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// throttleStage takes the request's cost from the device's token bucket and
// an in-flight slot, or refuses it with 429 and the time to retry.
type throttleStage struct {
	l *throttle.Limiter
	m *metrics.Metrics
}

func (s *throttleStage) check(in *inbound) *api.Error {
	if in.body.Cancel {
		return nil // a cancel costs nothing
	}
	d := s.l.AllowN(in.sender, in.topic.Model, len(in.body.Inputs))
	in.rl = RateLimit(d)
	if d.Reason == throttle.ReasonTooLarge {
		return api.Errorf(api.PayloadTooLarge, "%s", d.Describe(in.sender))
	}
	if !d.Allowed {
		s.m.Throttled(string(d.Reason))
		e := api.Errorf(api.RateLimited, "%s", d.Describe(in.sender))
		e.RetryAfterMS = max(d.RetryAfterMillis(), 1)
		return e
	}
	device, cost := in.sender, d.Cost
	in.release = func() { s.l.Done(device) }
	in.refund = func() { s.l.Refund(device, cost) }
	in.settle = func(share float64) { s.l.Settle(device, cost, share) }
	return nil
}

// RateLimit converts a throttle decision into the ratelimit object every
// reply carries.
func RateLimit(d throttle.Decision) *api.RateLimit {
	return &api.RateLimit{Limit: d.Limits.Burst, Remaining: d.Remaining, ResetMS: d.ResetMillis()}
}

func peekRateLimit(l *throttle.Limiter, device, model string) *api.RateLimit {
	return RateLimit(l.Peek(device, model))
}
