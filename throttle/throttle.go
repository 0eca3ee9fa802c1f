// Package throttle owns per-device rate limiting: a token bucket per device
// (a golang.org/x/time/rate Limiter), a cost in tokens per model, overrides
// for devices whose id matches a pattern, a limit on the requests a device may
// have in flight at once, and eviction of idle devices so that memory follows
// the active fleet rather than every device ever seen.
//
// A request is admitted with Allow, which either takes the request's tokens
// and one in-flight slot, or takes nothing and says why not and when to retry.
// Every admitted request must be followed by exactly one Done when its result
// has been sent; Refund gives the tokens back when an admitted request is
// dropped before any work was done for it (for example by a full queue).
//
// The package imports nothing from the rest of the service: the broker hook
// and the remote workers translate a Decision into their own wire format.
package throttle

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"path"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultCost is the cost, in tokens, of a request for a model that has no
// entry in Config.Costs (nor in the matching Override's Costs).
const DefaultCost = 1

// DefaultIdleTTL is the idle time after which a device is evicted when
// Config.IdleTTL is zero.
const DefaultIdleTTL = 10 * time.Minute

// InFlightRetryAfter is the smallest RetryAfter of a refusal for the in-flight
// limit. When a slot frees depends on how long the device's running requests
// take, which the limiter cannot know, so it suggests this pause (or the time
// until the bucket holds the request's cost, if that is longer).
const InFlightRetryAfter = 100 * time.Millisecond

// ErrInvalidConfig is wrapped by every error New returns.
var ErrInvalidConfig = errors.New("invalid throttle config")

// shardCount is the number of independently locked device maps, so that
// parallel calls for different devices rarely share a lock.
const shardCount = 64

// shrinkMin is the peak size above which a shard's map is rebuilt once
// eviction has emptied it to a quarter of that peak: Go maps never give
// memory back on delete, so without this a one-off surge of devices would
// hold its map memory forever.
const shrinkMin = 256

// Limits are the throttle settings for one device.
type Limits struct {
	// Rate is the refill rate of the device's bucket, in tokens per second.
	// 0 means no rate limit (every request passes the bucket). math.Inf(1)
	// also means no rate limit and, unlike 0, is not inherited from the
	// default: use it in an Override to exempt devices from Default.Rate.
	Rate float64
	// Burst is the size of the bucket, in tokens: the most a device can spend
	// at once after being idle. A new device starts with a full bucket. It must
	// be at least 1, and at least every model's cost, when Rate limits.
	Burst int
	// MaxInFlight is the number of admitted requests a device may have
	// unfinished (not yet passed to Done) at once. 0 means unlimited.
	MaxInFlight int
}

// rateLimited reports whether l has a finite, positive rate.
func (l Limits) rateLimited() bool { return l.Rate > 0 && !math.IsInf(l.Rate, 1) }

// Override applies to devices whose id matches Pattern, a path.Match glob such
// as "cam-*" or "meter-0[0-9]*". Zero fields of the embedded Limits inherit
// from Config.Default. Costs, when set, overrides the per-model costs of
// Config.Costs for those devices, model by model; models it does not list keep
// their Config.Costs entry.
type Override struct {
	Pattern string
	Limits
	Costs map[string]int
}

// Config configures a Limiter. The zero Config is valid and limits nothing.
type Config struct {
	// Default are the limits of devices that match no Override.
	Default Limits
	// Overrides are tried in order; the first whose Pattern matches the
	// device id applies.
	Overrides []Override
	// Costs maps a model name to the tokens one request for it costs (at
	// least 1). A model that is not listed costs what CostOf says, else
	// DefaultCost.
	Costs map[string]int
	// CostOf, when set, gives the cost of a model Costs does not list (a
	// model that appeared while the service runs); it must be safe for
	// concurrent use. A cost it reports is never below 1.
	CostOf func(model string) (int, bool)
	// IdleTTL is how long a device must have made no request before it is
	// evicted; it is evicted only if, in addition, its bucket would be full
	// by now and it has nothing in flight, so eviction never hands a device
	// tokens it would not have had. 0 means DefaultIdleTTL.
	IdleTTL time.Duration
	// Now returns the current time; nil means time.Now. It must be safe for
	// concurrent use. Tests inject a fake clock here.
	Now func() time.Time
}

// profile is the resolved configuration of Default or of one Override.
type profile struct {
	pattern string // "" for the default
	limits  Limits // with inherited fields filled in
	costs   map[string]int
	costOf  func(string) (int, bool)
	tracked bool // whether devices of this profile need any state
}

// cost returns the tokens a request for model costs under p.
func (p *profile) cost(model string) int {
	if c, ok := p.costs[model]; ok {
		return c
	}
	if p.costOf != nil {
		if c, ok := p.costOf(model); ok {
			return max(c, 1)
		}
	}
	return DefaultCost
}

// deviceState is the state of one tracked device, 96 bytes, kept small on
// purpose: a million devices must fit in well under 200 MB. The bucket is held
// by value, which saves a pointer and an allocation per device; it is unused
// when the device's profile has no rate limit.
type deviceState struct {
	bucket   rate.Limiter
	seen     int64 // Now().UnixNano() of the latest Allow
	inFlight int32 // admitted requests not yet passed to Done
	profile  int32 // index into Limiter.profiles
}

// newDeviceState returns the state of a device new to profile pi, with a full
// bucket, as rate.NewLimiter would make it. rate.NewLimiter returns a pointer
// and a Limiter holds a mutex, so it cannot be copied into place; instead the
// zero Limiter is configured as last updated at the zero time, which has
// refilled it to its burst by any present time (for any rate that fills a
// bucket in under 290 years; a slower bucket starts with 290 years' worth).
func newDeviceState(pi int32, l Limits) *deviceState {
	d := &deviceState{profile: pi}
	if l.rateLimited() {
		d.bucket.SetLimitAt(time.Time{}, rate.Limit(l.Rate))
		d.bucket.SetBurstAt(time.Time{}, l.Burst)
	}
	return d
}

// key identifies a device by a 128-bit hash of its id rather than by the id
// itself. That keeps a device's memory independent of the length of its id (a
// copy of a 36-byte UUID would cost 48 bytes more per device, a quarter of
// the budget) and saves an allocation per new device. The two halves come
// from independently seeded hash/maphash hashes whose seeds are random per
// Limiter and never exposed, so two ids share a key with probability about
// n²/2¹²⁹ (1e-27 for a million devices): far below any hardware error rate,
// and not something a device can aim for.
type key struct{ hi, lo uint64 }

type shard struct {
	mu      sync.Mutex
	devices map[key]*deviceState
	peak    int      // largest len(devices) since the map was last rebuilt
	_       [40]byte // keep shards on separate cache lines
}

// A Limiter throttles requests per device. It is safe for concurrent use;
// calls for different devices rarely contend.
type Limiter struct {
	profiles []profile // [0] is Config.Default, [i+1] is Config.Overrides[i]
	seeds    [2]maphash.Seed
	idleTTL  time.Duration
	now      func() time.Time
	shards   [shardCount]shard
}

// New returns a Limiter for cfg. It reports every problem in cfg at once,
// each naming the field at fault: a malformed or empty Pattern, a negative or
// NaN Rate, a negative Burst or MaxInFlight, a cost below 1, a negative
// IdleTTL, a rate limit with a zero Burst, or a model whose cost exceeds the
// Burst of some devices (such requests could never pass, so it is refused
// here rather than at run time). The errors wrap ErrInvalidConfig.
func New(cfg Config) (*Limiter, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}

	checkLimits := func(name string, l Limits) {
		if math.IsNaN(l.Rate) || l.Rate < 0 {
			bad("%s.Rate is %v; it must be >= 0 tokens/s (0 means unlimited)", name, l.Rate)
		}
		if l.Burst < 0 {
			bad("%s.Burst is %d; it must be >= 0 tokens", name, l.Burst)
		}
		if l.MaxInFlight < 0 {
			bad("%s.MaxInFlight is %d; it must be >= 0 (0 means unlimited)", name, l.MaxInFlight)
		}
	}
	checkCosts := func(name string, costs map[string]int) {
		for _, model := range slices.Sorted(maps.Keys(costs)) {
			if c := costs[model]; c < 1 {
				bad("%s[%q] is %d; a cost must be >= 1 token", name, model, c)
			}
		}
	}

	if cfg.IdleTTL < 0 {
		bad("IdleTTL is %v; it must be >= 0 (0 means %v)", cfg.IdleTTL, DefaultIdleTTL)
	}
	checkLimits("Default", cfg.Default)
	checkCosts("Costs", cfg.Costs)

	profiles := make([]profile, 0, 1+len(cfg.Overrides))
	profiles = append(profiles, profile{limits: cfg.Default, costs: cfg.Costs})
	for i, o := range cfg.Overrides {
		name := fmt.Sprintf("Overrides[%d]", i)
		if o.Pattern == "" {
			bad("%s.Pattern is empty; give a path.Match glob such as \"cam-*\"", name)
		} else if _, err := path.Match(o.Pattern, ""); err != nil {
			bad("%s.Pattern %q: %w", name, o.Pattern, err)
		}
		checkLimits(name, o.Limits)
		checkCosts(name+".Costs", o.Costs)

		p := profile{pattern: o.Pattern, limits: cfg.Default, costs: cfg.Costs}
		if o.Rate != 0 {
			p.limits.Rate = o.Rate
		}
		if o.Burst != 0 {
			p.limits.Burst = o.Burst
		}
		if o.MaxInFlight != 0 {
			p.limits.MaxInFlight = o.MaxInFlight
		}
		if len(o.Costs) > 0 {
			p.costs = maps.Clone(cfg.Costs)
			if p.costs == nil {
				p.costs = make(map[string]int, len(o.Costs))
			}
			maps.Copy(p.costs, o.Costs)
		}
		profiles = append(profiles, p)
	}

	for i := range profiles {
		p := &profiles[i]
		name := "Default"
		if i > 0 {
			name = fmt.Sprintf("Overrides[%d] (%q)", i-1, p.pattern)
		}
		if !p.limits.rateLimited() {
			continue
		}
		if p.limits.Burst == 0 {
			bad("%s has Rate %v but Burst 0, which refuses every request; set Burst >= 1", name, p.limits.Rate)
			continue
		}
		for _, model := range slices.Sorted(maps.Keys(p.costs)) {
			if c := p.costs[model]; c > p.limits.Burst {
				bad("%s: model %q costs %d tokens but the burst is %d, so its requests could never pass; raise Burst or lower the cost",
					name, model, c, p.limits.Burst)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	for i := range profiles {
		p := &profiles[i]
		p.tracked = p.limits.rateLimited() || p.limits.MaxInFlight > 0
		p.costOf = cfg.CostOf
	}
	l := &Limiter{
		profiles: profiles,
		seeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		idleTTL:  cfg.IdleTTL,
		now:      cfg.Now,
	}
	if l.idleTTL == 0 {
		l.idleTTL = DefaultIdleTTL
	}
	if l.now == nil {
		l.now = time.Now
	}
	for i := range l.shards {
		l.shards[i].devices = make(map[key]*deviceState)
	}
	return l, nil
}

// lookup returns the key of device id and the shard that holds it.
func (l *Limiter) lookup(id string) (key, *shard) {
	k := key{maphash.String(l.seeds[0], id), maphash.String(l.seeds[1], id)}
	return k, &l.shards[k.hi%shardCount]
}

// match returns the index in l.profiles of the profile for device id.
func (l *Limiter) match(id string) int32 {
	for i := 1; i < len(l.profiles); i++ {
		// Patterns were validated by New, so Match cannot fail here.
		if ok, _ := path.Match(l.profiles[i].pattern, id); ok {
			return int32(i)
		}
	}
	return 0
}

// Allow reports whether device may make a request for model now. If it may,
// Allow has taken the request's cost from the device's bucket and one of its
// in-flight slots: the caller must call Done once the request is finished,
// whatever its outcome. If it may not, Allow has taken nothing, and the
// Decision says why and when to retry.
//
// When both limits refuse, the in-flight limit is reported, with a RetryAfter
// no shorter than the wait for the tokens. A device whose limits are all
// unlimited is always allowed and is not tracked.
//
// Allow keeps no reference to device, so passing a substring of a larger
// string (such as a topic) does not keep that string alive.
func (l *Limiter) Allow(device, model string) Decision { return l.AllowN(device, model, 1) }

// AllowN is Allow for a batch of n requests for model taken as one: it
// costs n times the model's cost and one in-flight slot. A batch that costs
// more than the device's burst can never pass: it is refused with
// ReasonTooLarge and RetryAfter 0 (split it). n below 1 counts as 1.
func (l *Limiter) AllowN(device, model string, n int) Decision {
	n = max(n, 1)
	k, s := l.lookup(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := l.now()

	d := s.devices[k]
	if d == nil {
		pi := l.match(device)
		p := &l.profiles[pi]
		if !p.tracked {
			return decide(p, p.cost(model)*n, 0, 0)
		}
		d = newDeviceState(pi, p.limits)
		s.devices[k] = d
		s.peak = max(s.peak, len(s.devices))
	}
	d.seen = now.UnixNano()

	p := &l.profiles[d.profile]
	cost := p.cost(model) * n
	limited := p.limits.rateLimited()
	if limited && cost > p.limits.Burst {
		dec := decide(p, cost, int(d.inFlight), d.bucket.TokensAt(now))
		dec.Allowed, dec.Reason, dec.RetryAfter = false, ReasonTooLarge, 0
		return dec
	}
	var tokens float64
	if limited {
		tokens = d.bucket.TokensAt(now)
	}
	dec := decide(p, cost, int(d.inFlight), tokens)
	if !dec.Allowed {
		return dec
	}
	// decide applies the bucket's own rule to the bucket's own token count
	// at the same instant under the shard lock, so AllowN agrees with it.
	// Should the two ever disagree, the bucket has the last word.
	if limited && !d.bucket.AllowN(now, cost) {
		return decide(p, cost, int(d.inFlight), d.bucket.TokensAt(now))
	}
	d.inFlight++
	dec.InFlight++
	return dec
}

// Restore sets device's bucket to what another node knew of it: tokens
// in it at time at (read from the ratelimit of the device's last reply),
// for a device that moved to this node from another (a cluster edge it
// reconnected to). A device this limiter has seen since at keeps its own
// bucket. Its in-flight count stays this limiter's.
func (l *Limiter) Restore(device string, tokens float64, at time.Time) {
	k, s := l.lookup(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[k]
	if d != nil && d.seen >= at.UnixNano() {
		return
	}
	pi := l.match(device)
	if d != nil {
		pi = d.profile
	}
	p := &l.profiles[pi]
	if !p.tracked || !p.limits.rateLimited() {
		return
	}
	if d == nil {
		d = newDeviceState(pi, p.limits)
		s.devices[k] = d
		s.peak = max(s.peak, len(s.devices))
	}
	// A bucket that held tokens at time at was empty tokens/rate before:
	// empty a full one then, and it refills from there as it would have.
	empty := at.Add(-time.Duration(max(tokens, 0) / p.limits.Rate * float64(time.Second)))
	d.bucket.SetLimitAt(time.Time{}, rate.Limit(p.limits.Rate))
	d.bucket.SetBurstAt(time.Time{}, p.limits.Burst)
	d.bucket.AllowN(empty, p.limits.Burst)
	d.seen = at.UnixNano()
}

// Peek returns the Decision that Allow(device, model) would return now,
// without taking tokens or a slot and without starting to track device.
func (l *Limiter) Peek(device, model string) Decision {
	k, s := l.lookup(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := l.now()

	d := s.devices[k]
	if d == nil {
		p := &l.profiles[l.match(device)]
		dec := decide(p, p.cost(model), 0, float64(p.limits.Burst))
		if dec.Allowed && p.tracked {
			dec.InFlight++
		}
		return dec
	}
	p := &l.profiles[d.profile]
	var tokens float64
	if p.limits.rateLimited() {
		tokens = d.bucket.TokensAt(now)
	}
	dec := decide(p, p.cost(model), int(d.inFlight), tokens)
	if dec.Allowed {
		dec.InFlight++
	}
	return dec
}

// Done releases the in-flight slot taken by an allowed request of device.
// It does nothing for a device that is not tracked or has nothing in flight,
// so a stray or duplicate Done cannot raise a device's limit. A device with
// requests in flight is never evicted, so a missing Done keeps it tracked.
func (l *Limiter) Done(device string) {
	k, s := l.lookup(device)
	s.mu.Lock()
	if d := s.devices[k]; d != nil && d.inFlight > 0 {
		d.inFlight--
	}
	s.mu.Unlock()
}

// Refund puts tokens back into device's bucket, never beyond its Burst: for
// a request that Allow admitted but that was then dropped before any work was
// done for it (a full queue, a shutdown). Refund does not release the
// in-flight slot; call Done for that too. It does nothing if tokens < 1, if
// the device has no rate limit, or if it is not tracked (an untracked device
// starts with a full bucket anyway).
func (l *Limiter) Refund(device string, tokens int) {
	if tokens < 1 {
		return
	}
	k, s := l.lookup(device)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[k]
	if d == nil || !l.profiles[d.profile].limits.rateLimited() {
		return
	}
	now := l.now()
	room := float64(l.profiles[d.profile].limits.Burst) - d.bucket.TokensAt(now)
	n := min(tokens, int(math.Ceil(room)))
	if n < 1 {
		return
	}
	// rate.Limiter has no "add tokens": taking a negative number of tokens
	// adds them. A fractional excess over the burst is harmless, because the
	// bucket caps its tokens at the burst whenever it reads them.
	d.bucket.AllowN(now, -n)
}

// Settle gives device back the part of an up-front cost that a metered
// request did not use: share is the fraction used, in [0, 1], rounded up to
// whole tokens. It is Refund of cost minus the tokens used.
func (l *Limiter) Settle(device string, cost int, share float64) {
	used := int(math.Ceil(min(max(share, 0), 1) * float64(cost)))
	if used < cost {
		l.Refund(device, cost-used)
	}
}

// EvictIdle forgets, now, every device that has made no request for IdleTTL,
// has nothing in flight and whose bucket would be full by now, and returns
// how many it forgot. A forgotten device starts afresh, with a full bucket,
// exactly as it would have continued, so eviction never changes a decision.
func (l *Limiter) EvictIdle() int {
	evicted := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		now := l.now()
		cutoff := now.UnixNano() - int64(l.idleTTL)
		for k, d := range s.devices {
			if d.seen > cutoff || d.inFlight > 0 {
				continue
			}
			if lim := l.profiles[d.profile].limits; lim.rateLimited() && d.bucket.TokensAt(now) < float64(lim.Burst) {
				continue
			}
			delete(s.devices, k)
			evicted++
		}
		if s.peak >= shrinkMin && len(s.devices) <= s.peak/4 {
			m := make(map[key]*deviceState, len(s.devices))
			maps.Copy(m, s.devices)
			s.devices = m
			s.peak = len(m)
		}
		s.mu.Unlock()
	}
	return evicted
}

// Run calls EvictIdle every IdleTTL/2 (at least every millisecond) until ctx
// is done. It blocks; the caller runs it in a goroutine it owns and waits for
// it after canceling ctx. Run uses the real clock for its ticks, whatever
// Config.Now is.
func (l *Limiter) Run(ctx context.Context) {
	t := time.NewTicker(max(l.idleTTL/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.EvictIdle()
		}
	}
}

// Len returns the number of tracked devices. Devices whose limits are all
// unlimited are never tracked.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.devices)
		s.mu.Unlock()
	}
	return n
}

// Cost returns the tokens a request of device for model costs: the model's
// entry in the Costs of the Override that applies to device, else in
// Config.Costs, else DefaultCost.
func (l *Limiter) Cost(device, model string) int {
	return l.profiles[l.match(device)].cost(model)
}

// Limits returns the limits in force for device.
func (l *Limiter) Limits(device string) Limits {
	return l.profiles[l.match(device)].limits
}
