package throttle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake clock, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time           { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration)  { c.ns.Add(int64(d)) }
func (c *clock) config(cfg Config) Config { cfg.Now = c.Now; return cfg }
func mustNew(t testing.TB, cfg Config) *Limiter {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

// std is the limits of the examples in the design: 5 tokens/s, burst 10.
var std = Limits{Rate: 5, Burst: 10}

func TestBurstThenRefusal(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: std, Costs: map[string]int{"ocr": 2}}))

	for i := range 10 {
		d := l.Allow("d1", "anomaly")
		if !d.Allowed || d.Reason != "" || d.Cost != 1 || d.Remaining != 9-i || d.RetryAfter != 0 {
			t.Fatalf("request %d: got %+v, want allowed with %d remaining", i, d, 9-i)
		}
		l.Done("d1")
	}
	d := l.Allow("d1", "anomaly")
	want := Decision{Reason: ReasonRate, Limits: std, Cost: 1, Remaining: 0,
		Reset: 2 * time.Second, RetryAfter: 200 * time.Millisecond}
	if d != want {
		t.Fatalf("11th request: got %+v, want %+v", d, want)
	}
	if got, want := d.Describe("d1"), "device d1 is over 5 req/s (burst 10)"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
	d = l.Allow("d1", "ocr")
	if d.Allowed || d.Reason != ReasonRate || d.Cost != 2 || d.RetryAfter != 400*time.Millisecond {
		t.Fatalf("cost-2 request on an empty bucket: got %+v, want refused, RetryAfter 400ms", d)
	}
	if got, want := d.Describe("d1"), "device d1 is over 5 tokens/s (burst 10): this request costs 2 tokens, the bucket holds 0"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
	if d.RetryAfterMillis() != 400 || d.ResetMillis() != 2000 {
		t.Errorf("millis: retry %d reset %d, want 400 and 2000", d.RetryAfterMillis(), d.ResetMillis())
	}
	// Refusals took nothing: other devices are untouched, and this one's
	// bucket refills exactly as if they had not happened.
	if d := l.Allow("d2", "anomaly"); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("other device: got %+v, want allowed with 9 remaining", d)
	}
	c.Advance(200 * time.Millisecond)
	if d := l.Allow("d1", "anomaly"); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after 200ms: got %+v, want allowed with 0 remaining", d)
	}
}

func TestRefill(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: std, Costs: map[string]int{"chat": 4}}))
	for range 10 {
		l.Allow("d1", "anomaly")
	}
	steps := []struct {
		advance   time.Duration
		model     string
		allowed   bool
		remaining int
		reset     time.Duration
	}{
		{100 * time.Millisecond, "anomaly", false, 0, 1900 * time.Millisecond}, // 0.5 tokens
		{100 * time.Millisecond, "anomaly", true, 0, 2 * time.Second},          // 1 token, taken
		{time.Second, "anomaly", true, 4, 1200 * time.Millisecond},             // 5 tokens, 1 taken
		{0, "chat", true, 0, 2 * time.Second},                                  // 4 tokens, all taken
		{time.Hour, "chat", true, 6, 800 * time.Millisecond},                   // full, capped at 10
	}
	for i, s := range steps {
		c.Advance(s.advance)
		d := l.Allow("d1", s.model)
		if d.Allowed != s.allowed || d.Remaining != s.remaining || d.Reset != s.reset {
			t.Fatalf("step %d: got allowed=%v remaining=%d reset=%v, want %v %d %v",
				i, d.Allowed, d.Remaining, d.Reset, s.allowed, s.remaining, s.reset)
		}
	}
}

func TestNewDeviceStartsFull(t *testing.T) {
	for _, lim := range []Limits{std, {Rate: 0.001, Burst: 1000}, {Rate: 1e6, Burst: 1}} {
		c := newClock()
		l := mustNew(t, c.config(Config{Default: lim}))
		if d := l.Allow("d", "m"); !d.Allowed || d.Remaining != lim.Burst-1 {
			t.Errorf("%+v: first request got %+v, want %d remaining", lim, d, lim.Burst-1)
		}
	}
}

func TestRetryAfterMatchesBucket(t *testing.T) {
	cases := []struct {
		limits Limits
		cost   int
		spend  int           // tokens spent first
		wait   time.Duration // then time passed
		want   time.Duration // RetryAfter for a request of cost
	}{
		{std, 1, 10, 0, 200 * time.Millisecond},
		{std, 2, 10, 0, 400 * time.Millisecond},
		{std, 2, 10, 100 * time.Millisecond, 300 * time.Millisecond},
		{std, 10, 5, 0, time.Second},
		{Limits{Rate: 0.5, Burst: 3}, 3, 3, 0, 6 * time.Second},
		{Limits{Rate: 1000, Burst: 1}, 1, 1, 0, time.Millisecond},
		{Limits{Rate: 3, Burst: 8}, 4, 8, 0, 1333333333 * time.Nanosecond},
	}
	for _, tc := range cases {
		name := fmt.Sprintf("rate %v burst %d cost %d after %d spent and %v", tc.limits.Rate, tc.limits.Burst, tc.cost, tc.spend, tc.wait)
		t.Run(name, func(t *testing.T) {
			c := newClock()
			l := mustNew(t, c.config(Config{Default: tc.limits, Costs: map[string]int{"m": tc.cost}}))
			for range tc.spend {
				if d := l.Allow("d", "unit"); !d.Allowed {
					t.Fatalf("spending: %+v", d)
				}
			}
			c.Advance(tc.wait)
			d := l.Allow("d", "m")
			if d.Allowed || d.Reason != ReasonRate || d.RetryAfter != tc.want {
				t.Fatalf("got %+v, want refused with RetryAfter %v", d, tc.want)
			}
			// Just before RetryAfter the bucket still refuses; at RetryAfter it
			// admits, which is what the device is promised.
			c.Advance(tc.want - time.Millisecond)
			if d := l.Allow("d", "m"); d.Allowed {
				t.Fatalf("1ms before RetryAfter: allowed, want refused")
			}
			c.Advance(time.Millisecond)
			if d := l.Allow("d", "m"); !d.Allowed {
				t.Fatalf("at RetryAfter: got %+v, want allowed", d)
			}
		})
	}
}

func TestInFlight(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: Limits{MaxInFlight: 2}}))
	for i := range 2 {
		if d := l.Allow("d1", "m"); !d.Allowed || d.InFlight != i+1 {
			t.Fatalf("request %d: got %+v, want allowed with %d in flight", i, d, i+1)
		}
	}
	d := l.Allow("d1", "m")
	if d.Allowed || d.Reason != ReasonInFlight || d.InFlight != 2 || d.RetryAfter != InFlightRetryAfter {
		t.Fatalf("third request: got %+v, want in_flight refusal after %v", d, InFlightRetryAfter)
	}
	if got, want := d.Describe("d1"), "device d1 has 2 requests in flight (limit 2)"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
	if d := l.Allow("d2", "m"); !d.Allowed {
		t.Fatalf("another device is limited by d1's requests: %+v", d)
	}
	l.Done("d1")
	if d := l.Allow("d1", "m"); !d.Allowed || d.InFlight != 2 {
		t.Fatalf("after Done: got %+v, want allowed with 2 in flight", d)
	}
	// Stray and duplicate Done calls cannot raise the limit.
	l.Done("unknown")
	for range 5 {
		l.Done("d1")
	}
	for i := range 3 {
		if d := l.Allow("d1", "m"); d.Allowed != (i < 2) {
			t.Fatalf("request %d after extra Done calls: allowed=%v", i, d.Allowed)
		}
	}
	// Without a rate limit the bucket reports its burst.
	if d.Remaining != 0 || d.Reset != 0 || d.Limits.Burst != 0 {
		t.Errorf("unlimited rate: remaining %d reset %v", d.Remaining, d.Reset)
	}
}

func TestInFlightRefusalTakesNoTokensAndWaitsForThem(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: Limits{Rate: 1, Burst: 3, MaxInFlight: 1}}))
	if d := l.Allow("d", "m"); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("first: %+v", d)
	}
	d := l.Allow("d", "m")
	if d.Allowed || d.Reason != ReasonInFlight || d.Remaining != 2 || d.RetryAfter != InFlightRetryAfter {
		t.Fatalf("second: got %+v, want in_flight with 2 tokens left", d)
	}
	l.Done("d")
	if d := l.Allow("d", "m"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("third: got %+v, want allowed with 1 left (the refusal took nothing)", d)
	}
	l.Allow("d", "m") // in_flight: refused
	l.Done("d")
	l.Allow("d", "m") // takes the last token
	// Both limits refuse: in_flight is reported, with the wait for a token.
	d = l.Allow("d", "m")
	if d.Reason != ReasonInFlight || d.RetryAfter != time.Second {
		t.Fatalf("both limits: got %+v, want in_flight with RetryAfter 1s", d)
	}
}

func TestOverrides(t *testing.T) {
	c := newClock()
	cfg := c.config(Config{
		Default: Limits{Rate: 5, Burst: 10, MaxInFlight: 4},
		Costs:   map[string]int{"chat": 4, "ocr": 2},
		Overrides: []Override{
			{Pattern: "cam-*", Limits: Limits{Rate: 1}},
			{Pattern: "cam-01", Limits: Limits{Rate: 100}}, // shadowed by cam-*
			{Pattern: "meter-?", Limits: Limits{Burst: 5}, Costs: map[string]int{"chat": 5, "vad": 3}},
			{Pattern: "gw-*", Limits: Limits{Rate: math.Inf(1), MaxInFlight: 64}},
		},
	})
	l := mustNew(t, cfg)
	cases := []struct {
		device, model string
		limits        Limits
		cost          int
	}{
		{"d1", "anomaly", Limits{5, 10, 4}, 1},
		{"d1", "chat", Limits{5, 10, 4}, 4},
		{"cam-01", "ocr", Limits{1, 10, 4}, 2},
		{"meter-7", "chat", Limits{5, 5, 4}, 5},
		{"meter-7", "ocr", Limits{5, 5, 4}, 2},
		{"meter-7", "vad", Limits{5, 5, 4}, 3},
		{"meter-77", "vad", Limits{5, 10, 4}, 1},
		{"gw-1", "chat", Limits{math.Inf(1), 10, 64}, 4},
	}
	for _, tc := range cases {
		if got := l.Limits(tc.device); got != tc.limits {
			t.Errorf("Limits(%s) = %+v, want %+v", tc.device, got, tc.limits)
		}
		if got := l.Cost(tc.device, tc.model); got != tc.cost {
			t.Errorf("Cost(%s, %s) = %d, want %d", tc.device, tc.model, got, tc.cost)
		}
		d := l.Peek(tc.device, tc.model)
		if d.Limits != tc.limits || d.Cost != tc.cost {
			t.Errorf("Peek(%s, %s) = %+v, want limits %+v cost %d", tc.device, tc.model, d, tc.limits, tc.cost)
		}
	}

	// cam-01 refills at 1 token/s, not 100.
	for range 10 {
		l.Allow("cam-01", "anomaly")
		l.Done("cam-01")
	}
	if d := l.Allow("cam-01", "anomaly"); d.Allowed || d.RetryAfter != time.Second {
		t.Fatalf("cam-01 on an empty bucket: got %+v, want RetryAfter 1s", d)
	}
	// gw-* has no rate limit but keeps its in-flight limit.
	for i := range 100 {
		d := l.Allow("gw-1", "chat")
		if d.Allowed != (i < 64) || (!d.Allowed && d.Reason != ReasonInFlight) {
			t.Fatalf("gw-1 request %d: %+v", i, d)
		}
		if d.Allowed && d.Remaining != 10 {
			t.Fatalf("gw-1: Remaining %d, want the burst", d.Remaining)
		}
	}
}

func TestNewValidation(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want []string // substrings of the error, one per problem
	}{
		{"negative rate", Config{Default: Limits{Rate: -1, Burst: 1}}, []string{"Default.Rate is -1"}},
		{"NaN rate", Config{Default: Limits{Rate: math.NaN(), Burst: 1}}, []string{"Default.Rate is NaN"}},
		{"negative burst", Config{Default: Limits{Burst: -2}}, []string{"Default.Burst is -2"}},
		{"negative in flight", Config{Default: Limits{MaxInFlight: -1}}, []string{"Default.MaxInFlight is -1"}},
		{"zero burst with a rate", Config{Default: Limits{Rate: 5}}, []string{"Default has Rate 5 but Burst 0"}},
		{"cost below 1", Config{Costs: map[string]int{"chat": 0}}, []string{`Costs["chat"] is 0`}},
		{"negative idle ttl", Config{IdleTTL: -time.Second}, []string{"IdleTTL is -1s"}},
		{"bad pattern", Config{Overrides: []Override{{Pattern: "cam-["}}}, []string{`Overrides[0].Pattern "cam-[": syntax error in pattern`}},
		{"empty pattern", Config{Overrides: []Override{{}}}, []string{"Overrides[0].Pattern is empty"}},
		{"override fields", Config{Overrides: []Override{
			{Pattern: "a*"},
			{Pattern: "b*", Limits: Limits{Rate: -3, MaxInFlight: -4}, Costs: map[string]int{"ocr": -1}},
		}}, []string{"Overrides[1].Rate is -3", "Overrides[1].MaxInFlight is -4", `Overrides[1].Costs["ocr"] is -1`}},
		{"cost above burst", Config{Default: std, Costs: map[string]int{"chat": 11}},
			[]string{`Default: model "chat" costs 11 tokens but the burst is 10`}},
		{"cost above an override's burst", Config{Default: std, Costs: map[string]int{"chat": 4},
			Overrides: []Override{{Pattern: "cam-*", Limits: Limits{Burst: 3}}}},
			[]string{`Overrides[0] ("cam-*"): model "chat" costs 4 tokens but the burst is 3`}},
		{"override cost above burst", Config{Default: std,
			Overrides: []Override{{Pattern: "cam-*", Costs: map[string]int{"ocr": 20}}}},
			[]string{`Overrides[0] ("cam-*"): model "ocr" costs 20 tokens`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.cfg)
			if err == nil {
				t.Fatalf("New succeeded (%d devices), want an error", l.Len())
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if n := strings.Count(err.Error(), "\n") + 1; n != len(tc.want) {
				t.Errorf("got %d problems, want %d: %v", n, len(tc.want), err)
			}
		})
	}

	valid := []Config{
		{},
		{Default: Limits{MaxInFlight: 3}},
		{Default: std, Costs: map[string]int{"chat": 10}},
		// A big cost is fine for devices without a rate limit.
		{Costs: map[string]int{"chat": 1000}, Overrides: []Override{{Pattern: "x", Limits: Limits{Rate: math.Inf(1)}}}},
	}
	for i, cfg := range valid {
		if _, err := New(cfg); err != nil {
			t.Errorf("valid config %d: %v", i, err)
		}
	}
}

func TestUnlimitedDevicesAreNotTracked(t *testing.T) {
	l := mustNew(t, Config{Default: Limits{Burst: 7}})
	for range 1000 {
		d := l.Allow("d", "m")
		if !d.Allowed || d.Remaining != 7 || d.Reset != 0 {
			t.Fatalf("got %+v, want allowed with Remaining = Burst", d)
		}
		if got, want := d.Describe("d"), "device d is within its limits"; got != want {
			t.Fatalf("Describe = %q, want %q", got, want)
		}
	}
	if n := l.Len(); n != 0 {
		t.Fatalf("Len = %d, want 0", n)
	}
	l.Done("d")
	l.Refund("d", 3)
}

func TestRefund(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: std, Costs: map[string]int{"chat": 4}}))
	l.Allow("d", "chat")
	l.Allow("d", "chat") // 2 left
	l.Refund("d", 4)
	if d := l.Peek("d", "anomaly"); d.Remaining != 5 {
		t.Fatalf("after refunding 4: Peek = %+v, want 5 left after a cost-1 request", d)
	}
	l.Refund("d", 100)
	if d := l.Peek("d", "anomaly"); d.Remaining != 9 || d.Reset != 200*time.Millisecond {
		t.Fatalf("after refunding 100: Peek = %+v, want the bucket full (capped at the burst)", d)
	}
	// The bucket was capped at 10: spending 10 leaves it empty.
	for range 10 {
		l.Allow("d", "anomaly")
	}
	if d := l.Allow("d", "anomaly"); d.Allowed {
		t.Fatalf("refund overfilled the bucket: %+v", d)
	}
	// A partial bucket: half a token plus a refund of 2 is 2.5.
	c.Advance(100 * time.Millisecond)
	l.Refund("d", 2)
	if d := l.Peek("d", "anomaly"); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("after refunding 2 into 0.5 tokens: Peek = %+v, want 1 left", d)
	}
	l.Refund("d", 0)
	l.Refund("d", -5)
	l.Refund("unknown", 5)
	if d := l.Peek("d", "anomaly"); d.Remaining != 1 {
		t.Fatalf("no-op refunds changed the bucket: %+v", d)
	}
	if n := l.Len(); n != 1 {
		t.Fatalf("Refund of an unknown device tracked it: Len = %d", n)
	}
}

func TestPeekMatchesAllow(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{
		Default: Limits{Rate: 3, Burst: 6, MaxInFlight: 3},
		Costs:   map[string]int{"big": 4},
	}))
	models := []string{"a", "big", "a", "a", "big"}
	for i := range 200 {
		model := models[i%len(models)]
		peek := l.Peek("d", model)
		got := l.Allow("d", model)
		if peek != got {
			t.Fatalf("step %d: Peek %+v != Allow %+v", i, peek, got)
		}
		if i%3 == 0 {
			l.Done("d")
		}
		c.Advance(time.Duration(i%7) * 37 * time.Millisecond)
	}
	if n := mustNew(t, Config{Default: std}); n.Peek("x", "m").Remaining != 9 || n.Len() != 0 {
		t.Fatalf("Peek of an unknown device: want a full bucket and no tracking")
	}
}

func TestEvictIdle(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{
		Default:   std,
		IdleTTL:   time.Minute,
		Overrides: []Override{{Pattern: "slow-*", Limits: Limits{Rate: 0.01}}},
	}))
	l.Allow("idle", "m")
	l.Done("idle")
	l.Allow("busy", "m") // never Done
	l.Allow("slow-1", "m")
	l.Done("slow-1")
	c.Advance(time.Minute)
	l.Allow("recent", "m")
	l.Done("recent")

	if n := l.EvictIdle(); n != 1 {
		t.Fatalf("EvictIdle = %d, want 1 (only the idle, full device)", n)
	}
	if n := l.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
	// slow-1 still has a partial bucket: its refusal is as if never evicted.
	for range 9 {
		l.Allow("slow-1", "m")
		l.Done("slow-1")
	}
	if d := l.Allow("slow-1", "m"); d.Allowed {
		t.Fatalf("slow-1 got free tokens: %+v", d)
	}
	c.Advance(time.Minute)
	l.Done("busy")
	if n := l.EvictIdle(); n != 2 {
		t.Fatalf("EvictIdle after Done = %d, want 2 (busy and recent)", n)
	}
	if n := l.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1 (slow-1)", n)
	}
	if n := l.EvictIdle(); n != 0 {
		t.Fatalf("second EvictIdle = %d, want 0", n)
	}
}

func TestEvictShrinksMaps(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: std, IdleTTL: time.Second}))
	const n = 2 * shrinkMin * shardCount
	for i := range n {
		id := "dev-" + strconv.Itoa(i)
		l.Allow(id, "m")
		l.Done(id)
	}
	c.Advance(time.Hour)
	if got := l.EvictIdle(); got != n {
		t.Fatalf("EvictIdle = %d, want %d", got, n)
	}
	for i := range l.shards {
		if s := &l.shards[i]; s.peak != 0 {
			t.Fatalf("shard %d: peak %d after evicting everything, want the map rebuilt", i, s.peak)
		}
	}
	if d := l.Allow("dev-1", "m"); !d.Allowed || d.Remaining != 9 || l.Len() != 1 {
		t.Fatalf("after shrinking: %+v, Len %d", d, l.Len())
	}
}

func TestRunEvicts(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: std, IdleTTL: 2 * time.Millisecond}))
	l.Allow("d1", "m")
	l.Done("d1")
	c.Advance(time.Hour)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	deadline := time.Now().Add(10 * time.Second)
	for l.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not evict the idle device within 10s")
		}
		runtime.Gosched()
	}
	cancel()
	<-done
}

// TestConcurrent hammers one limiter from many goroutines and checks what
// must hold whatever the interleaving. The clock is frozen, so no bucket
// refills: each bucket admits exactly its burst.
func TestConcurrent(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{
		Default:   Limits{Rate: 1, Burst: 50},
		Overrides: []Override{{Pattern: "shared-slots", Limits: Limits{Rate: math.Inf(1), MaxInFlight: 3}}},
		IdleTTL:   time.Nanosecond,
	}))
	const workers, perWorker, devices = 16, 400, 20
	var (
		wg          sync.WaitGroup
		allowed     [devices]atomic.Int64
		sharedAllow atomic.Int64
		holding     atomic.Int64
		maxHolding  atomic.Int64
	)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				dev := "dev-" + strconv.Itoa((w+i)%devices)
				if d := l.Allow(dev, "m"); d.Allowed {
					allowed[(w+i)%devices].Add(1)
					l.Done(dev)
				}
				if d := l.Allow("shared-slots", "m"); d.Allowed {
					sharedAllow.Add(1)
					h := holding.Add(1)
					for m := maxHolding.Load(); h > m && !maxHolding.CompareAndSwap(m, h); m = maxHolding.Load() {
					}
					runtime.Gosched()
					holding.Add(-1)
					l.Done("shared-slots")
				}
				switch i % 50 {
				case 0:
					l.Peek(dev, "m")
				case 1:
					l.Len()
				case 2:
					l.EvictIdle() // buckets are never full again, so nothing goes
				}
			}
		})
	}
	wg.Wait()
	for i := range allowed {
		if got := allowed[i].Load(); got != 50 {
			t.Errorf("dev-%d: %d allowed, want exactly the burst of 50", i, got)
		}
	}
	if m := maxHolding.Load(); m > 3 {
		t.Errorf("shared-slots had %d requests in flight at once, limit 3", m)
	}
	if sharedAllow.Load() == 0 {
		t.Error("shared-slots never admitted a request")
	}
	if d := l.Peek("shared-slots", "m"); d.InFlight != 1 {
		t.Errorf("shared-slots: %d in flight at the end, want 0 (Peek counts the peeked request)", d.InFlight-1)
	}
	c.Advance(time.Nanosecond)
	if n := l.EvictIdle(); n != 1 {
		t.Errorf("EvictIdle at the end = %d, want 1 (shared-slots)", n)
	}
}

// TestMemoryPerDevice checks the design's memory bound: a million tracked
// devices in well under 200 MB, that is under 200 bytes per device. It tracks
// a quarter of a million, to stay quick: the cost per device does not grow
// with the count (BenchmarkBytesPerDevice measures a million and more). Device
// ids are substrings of larger topic strings, as the broker passes them, so
// keeping a reference to the caller's string would blow the bound.
func TestMemoryPerDevice(t *testing.T) {
	n := 250_000
	if testing.Short() || raceEnabled {
		n = 50_000
	}
	perDevice := bytesPerDevice(t, n)
	t.Logf("%d devices: %.1f bytes per device (%.0f MB per million)", n, perDevice, perDevice)
	if perDevice >= 200 {
		t.Fatalf("%.1f bytes per device, want < 200", perDevice)
	}
}

// bytesPerDevice tracks n devices with typical limits and returns the live
// heap they take, per device.
func bytesPerDevice(tb testing.TB, n int) float64 {
	tb.Helper()
	l := mustNew(tb, Config{Default: Limits{Rate: 5, Burst: 10, MaxInFlight: 4}})
	padding := strings.Repeat("x", 64)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	buf := make([]byte, 0, 512)
	for i := range n {
		buf = append(buf[:0], "mqttinfer/v1/req/dev-"...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		end := len(buf)
		buf = append(buf, "/anomaly/"...)
		buf = append(buf, padding...)
		topic := string(buf)
		if d := l.Allow(topic[len("mqttinfer/v1/req/"):end], "anomaly"); !d.Allowed {
			tb.Fatalf("device %d refused: %+v", i, d)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if l.Len() != n {
		tb.Fatalf("Len = %d, want %d", l.Len(), n)
	}
	runtime.KeepAlive(l)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
}

func TestAllowNBatches(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: Limits{Rate: 1, Burst: 10}, Costs: map[string]int{"m": 2}}))
	d := l.AllowN("d", "m", 3)
	if !d.Allowed || d.Cost != 6 || d.Remaining != 4 {
		t.Fatalf("batch of 3: %+v", d)
	}
	l.Done("d")
	if d := l.AllowN("d", "m", 3); d.Allowed || d.Reason != ReasonRate || d.RetryAfter != 2*time.Second {
		t.Fatalf("second batch: %+v", d)
	}
	d = l.AllowN("d", "m", 6)
	if d.Allowed || d.Reason != ReasonTooLarge || d.RetryAfter != 0 || !strings.Contains(d.Describe("d"), "split") {
		t.Fatalf("batch over the burst: %+v %q", d, d.Describe("d"))
	}
}

func TestSettle(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: Limits{Rate: 1, Burst: 10}, Costs: map[string]int{"chat": 8}}))
	if d := l.Allow("d", "chat"); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("allow: %+v", d)
	}
	l.Done("d")
	l.Settle("d", 8, 0.1) // used ceil(0.8) = 1 token: 7 back
	if d := l.Peek("d", "chat"); d.Remaining != 1 {
		t.Errorf("after settling a 10%% share: remaining %d after a second request, want 1", d.Remaining)
	}
	l.Settle("d", 8, 1.5) // a share over 1 counts as all: nothing back
	l.Settle("d", 8, -1)  // below 0 counts as none: the whole cost back, capped at the burst
	if d := l.Peek("d", "chat"); d.Remaining != 2 {
		t.Errorf("after settling nothing used: remaining %d after a request, want 2 (full bucket of 10)", d.Remaining)
	}
}

func TestRestore(t *testing.T) {
	c := newClock()
	l := mustNew(t, c.config(Config{Default: std}))
	// Another node left d with 2.5 tokens 100 ms ago: 3 now.
	l.Restore("d", 2.5, c.Now().Add(-100*time.Millisecond))
	if d := l.Peek("d", "anomaly"); d.Remaining != 2 || d.Reset != 1600*time.Millisecond {
		t.Fatalf("restored: Peek = %+v, want 3 tokens (2 left after one, full in 1.6 s)", d)
	}
	for range 3 {
		if d := l.Allow("d", "anomaly"); !d.Allowed {
			t.Fatalf("restored tokens refused: %+v", d)
		}
	}
	if d := l.Allow("d", "anomaly"); d.Allowed {
		t.Fatalf("a 4th request passed: %+v", d)
	}
	// What this limiter saw since is newer than a stale restore.
	l.Restore("d", 10, c.Now().Add(-time.Second))
	if d := l.Peek("d", "anomaly"); d.Allowed {
		t.Fatalf("a stale restore refilled the bucket: %+v", d)
	}
	// A restore from long ago is a full bucket, never more.
	l.Restore("e", 0, c.Now().Add(-time.Hour))
	if d := l.Peek("e", "anomaly"); d.Remaining != 9 {
		t.Fatalf("old restore: Peek = %+v, want a full bucket", d)
	}
	// Unlimited devices are not tracked.
	u := mustNew(t, c.config(Config{Default: Limits{}}))
	u.Restore("d", 1, c.Now())
	if u.Len() != 0 {
		t.Fatal("an unlimited device is tracked after a restore")
	}
}
