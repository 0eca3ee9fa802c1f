package throttle

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Reason says which limit refused a request.
type Reason string

// The reasons a request can be refused.
const (
	// ReasonRate: the device's bucket holds fewer tokens than the request costs.
	ReasonRate Reason = "rate"
	// ReasonInFlight: the device already has MaxInFlight requests unfinished.
	ReasonInFlight Reason = "in_flight"
	// ReasonTooLarge: a batch (AllowN) costs more than the device's burst,
	// so it can never pass; it must be split.
	ReasonTooLarge Reason = "too_large"
)

// A Decision is the outcome of Allow or Peek for one request, with what a
// device needs to pace itself.
type Decision struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Reason says why the request was refused; "" when it is allowed.
	Reason Reason
	// Limits are the limits in force for the device.
	Limits Limits
	// Cost is what the request costs, in tokens.
	Cost int
	// Remaining is the number of whole tokens left in the bucket after this
	// decision (after taking Cost if allowed). Without a rate limit it is
	// Limits.Burst.
	Remaining int
	// InFlight is the number of the device's requests in flight after this
	// decision, this one included if allowed; always 0 for a device that has
	// no limits at all, as such devices are not tracked.
	InFlight int
	// Reset is the time until the bucket is full again; 0 without a rate limit.
	Reset time.Duration
	// RetryAfter is, when refused, how long until this request could be
	// allowed. For ReasonRate it is exactly the time the bucket needs to
	// refill the missing tokens: retrying after RetryAfter succeeds unless
	// the device spends tokens meanwhile. For ReasonInFlight it is the time
	// until the bucket holds Cost tokens, but at least InFlightRetryAfter.
	// 0 when allowed.
	RetryAfter time.Duration
}

// decide computes the Decision for a request of cost tokens under p, given
// the device's in-flight count and the tokens in its bucket now. It takes
// nothing; Allow takes after it says yes.
func decide(p *profile, cost, inFlight int, tokens float64) Decision {
	d := Decision{Limits: p.limits, Cost: cost, InFlight: inFlight}
	limited := p.limits.rateLimited()

	var wait time.Duration // until the bucket holds cost tokens
	if limited {
		wait = fill(float64(cost)-tokens, p.limits.Rate)
	}
	switch {
	case p.limits.MaxInFlight > 0 && inFlight >= p.limits.MaxInFlight:
		d.Reason = ReasonInFlight
		d.RetryAfter = max(wait, InFlightRetryAfter)
	case wait > 0:
		d.Reason = ReasonRate
		d.RetryAfter = wait
	default:
		d.Allowed = true
		tokens -= float64(cost)
	}

	if !limited {
		d.Remaining = p.limits.Burst
		return d
	}
	d.Remaining = max(0, int(math.Floor(tokens)))
	d.Reset = fill(float64(p.limits.Burst)-tokens, p.limits.Rate)
	return d
}

// fill returns how long a bucket refilling at r tokens per second needs to
// gain missing tokens; 0 if missing <= 0. It converts exactly as
// golang.org/x/time/rate does (truncating to the nanosecond), so that a wait
// of fill(...) is never refused by the bucket for lack of a fraction.
func fill(missing, r float64) time.Duration {
	if missing <= 0 {
		return 0
	}
	d := (missing / r) * float64(time.Second)
	if d >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

// RetryAfterMillis is RetryAfter in whole milliseconds, rounded up, so that a
// refusal never tells a device to retry after 0 ms.
func (d Decision) RetryAfterMillis() int64 { return ceilMillis(d.RetryAfter) }

// ResetMillis is Reset in whole milliseconds, rounded up.
func (d Decision) ResetMillis() int64 { return ceilMillis(d.Reset) }

func ceilMillis(d time.Duration) int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond > 0 {
		ms++
	}
	return ms
}

// Describe explains the decision for device in one sentence meant for the
// device's operator, such as "device d1 is over 5 req/s (burst 10)" or
// "device d1 has 4 requests in flight (limit 4)".
func (d Decision) Describe(device string) string {
	if d.Reason == ReasonTooLarge {
		return fmt.Sprintf("this batch costs %d tokens, more than device %s's bucket holds (burst %d): split it", d.Cost, device, d.Limits.Burst)
	}
	rate := strconv.FormatFloat(d.Limits.Rate, 'f', -1, 64)
	switch d.Reason {
	case ReasonRate:
		if d.Cost == 1 {
			return fmt.Sprintf("device %s is over %s req/s (burst %d)", device, rate, d.Limits.Burst)
		}
		return fmt.Sprintf("device %s is over %s tokens/s (burst %d): this request costs %d tokens, the bucket holds %d",
			device, rate, d.Limits.Burst, d.Cost, d.Remaining)
	case ReasonInFlight:
		return fmt.Sprintf("device %s has %d requests in flight (limit %d)", device, d.InFlight, d.Limits.MaxInFlight)
	case "":
		if !d.Limits.rateLimited() {
			return fmt.Sprintf("device %s is within its limits", device)
		}
		return fmt.Sprintf("device %s is within its limits (%d of %d tokens left)", device, d.Remaining, d.Limits.Burst)
	}
	return fmt.Sprintf("device %s: refused (%s)", device, d.Reason)
}
