package gateway

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
)

// The rate-limit headers of draft-ietf-httpapi-ratelimit-headers, in their
// structured-field form, for the client's one policy, named "default":
//
//	RateLimit-Policy: "default";q=<burst>;w=<seconds to refill an empty bucket>
//	RateLimit: "default";r=<tokens left>;t=<seconds until the bucket is full>
//
// Seconds are rounded up. A client without a rate limit gets neither header.
const (
	headerRateLimitPolicy = "RateLimit-Policy"
	headerRateLimit       = "RateLimit"
)

// setRateLimitHeaders sets the rate-limit headers for decision d.
func setRateLimitHeaders(h http.Header, d throttle.Decision) {
	l := d.Limits
	if !(l.Rate > 0) || math.IsInf(l.Rate, 1) {
		return
	}
	window := math.Ceil(float64(l.Burst) / l.Rate)
	h.Set(headerRateLimitPolicy, `"default";q=`+strconv.Itoa(l.Burst)+`;w=`+strconv.FormatInt(clampSeconds(window), 10))
	h.Set(headerRateLimit, `"default";r=`+strconv.Itoa(d.Remaining)+`;t=`+strconv.FormatInt(ceilSeconds(d.Reset), 10))
}

// setRetryAfter sets Retry-After in whole seconds, rounded up and at least 1,
// from a wait in milliseconds.
func setRetryAfter(h http.Header, ms int64) {
	h.Set("Retry-After", strconv.FormatInt(max(1, ceilSeconds(time.Duration(ms)*time.Millisecond)), 10))
}

func ceilSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}

// clampSeconds converts seconds to an int64, saturating instead of
// overflowing for a bucket that would take longer than int64 seconds.
func clampSeconds(s float64) int64 {
	if s >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(s)
}

// standing turns a Peek, which answers as if the request had been taken
// (Remaining and Reset after its cost), into the bucket as it stands, for
// replies to requests that took no tokens: a refusal before the throttle,
// or a request refunded by a full queue.
func standing(d throttle.Decision) throttle.Decision {
	l := d.Limits
	if !d.Allowed || !(l.Rate > 0) || math.IsInf(l.Rate, 1) {
		return d
	}
	d.Remaining = min(d.Remaining+d.Cost, l.Burst)
	d.Reset = max(0, d.Reset-time.Duration(float64(d.Cost)/l.Rate*float64(time.Second)))
	return d
}

// rateLimitOf is the ratelimit object of a reply, as the broker sends it.
func rateLimitOf(d throttle.Decision) *api.RateLimit {
	return &api.RateLimit{Limit: d.Limits.Burst, Remaining: d.Remaining, ResetMS: d.ResetMillis()}
}
