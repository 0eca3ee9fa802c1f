package throttle

import "math"

// State is where one device stands with its limits at a moment: what a
// dashboard or an operator wants to see, read without changing anything.
type State struct {
	// Limits are the limits in force for the device.
	Limits Limits
	// Tokens is the device's bucket now, in tokens (fractions included);
	// a device that is not tracked has a full bucket. It is Limits.Burst
	// when the device has no rate limit.
	Tokens float64
	// InFlight is the device's admitted requests not yet passed to Done.
	InFlight int
	// Tracked reports whether the Limiter holds state for the device (it
	// made a request within the idle time, or has one in flight).
	Tracked bool
}

// Snapshot returns device's State now, without taking tokens or a slot and
// without starting to track it. It is safe for concurrent use.
func (l *Limiter) Snapshot(device string) State {
	k, s := l.lookup(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[k]
	if d == nil {
		lim := l.profiles[l.match(device)].limits
		return State{Limits: lim, Tokens: float64(lim.Burst)}
	}
	p := &l.profiles[d.profile]
	st := State{Limits: p.limits, Tokens: float64(p.limits.Burst), InFlight: int(d.inFlight), Tracked: true}
	if p.limits.rateLimited() {
		st.Tokens = math.Max(0, d.bucket.TokensAt(l.now()))
	}
	return st
}
