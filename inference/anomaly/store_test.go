package anomaly

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// clock is a settable time source for eviction tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Many devices stream at once; every series sees exactly its own samples,
// in order. Two goroutines share one series per device to exercise the
// per-series lock. Run with -race.
func TestConcurrentDevices(t *testing.T) {
	m := New(Config{})
	const devices, sensors, samples = 32, 3, 60
	var wg sync.WaitGroup
	errs := make(chan error, devices*(sensors+2))
	for d := range devices {
		dev := fmt.Sprintf("dev-%d", d)
		for s := range sensors {
			wg.Go(func() {
				sensor := fmt.Sprintf("s%d", s)
				for i, x := range noise(uint64(d*sensors+s), samples, float64(d), 1) {
					in := fmt.Sprintf(`{"sensor":%q,"value":%g}`, sensor, x)
					if i%10 == 9 { // some batches among the singles
						in = fmt.Sprintf(`{"sensor":%q,"values":[%g]}`, sensor, x)
					}
					out, err := infer(t, m, dev, in, "")
					if err != nil {
						errs <- err
						return
					}
					var n int64
					switch r := out.(type) {
					case Result:
						n = r.N
					case BatchResult:
						n = r.Results[0].N
					}
					if n != int64(i+1) {
						errs <- fmt.Errorf("%s/%s sample %d: n = %d", dev, sensor, i+1, n)
						return
					}
				}
			})
		}
		for range 2 {
			wg.Go(func() {
				for range samples {
					if _, err := infer(t, m, dev, `{"sensor":"shared","values":[1,2]}`, ""); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := m.Len(), devices*(sensors+1); got != want {
		t.Errorf("Len() = %d, want %d", got, want)
	}
	for d := range devices {
		r := one(t, m, fmt.Sprintf("dev-%d", d), `{"sensor":"shared","value":1}`)
		if r.N != 2*2*samples+1 {
			t.Errorf("dev-%d shared series: n = %d, want %d", d, r.N, 2*2*samples+1)
		}
	}
}

// Past MaxSeries the least recently used series goes, and starts over.
func TestEvictLeastRecentlyUsed(t *testing.T) {
	m := New(Config{MaxSeries: 3})
	send := func(dev string) int64 { return one(t, m, dev, `{"sensor":"t","value":1}`).N }
	send("a")
	send("b")
	send("c")
	send("a") // b is now the least recently used
	if n := send("d"); n != 1 || m.Len() != 3 {
		t.Fatalf("d: n %d, Len %d", n, m.Len())
	}
	if n := send("a"); n != 3 {
		t.Errorf("a was evicted: n = %d", n)
	}
	if n := send("c"); n != 2 {
		t.Errorf("c was evicted: n = %d", n)
	}
	if n := send("b"); n != 1 {
		t.Errorf("b kept its state past MaxSeries: n = %d", n)
	}
	if m.Len() != 3 {
		t.Errorf("Len() = %d, want 3", m.Len())
	}
	// d was the least recently used when b came back.
	if n := send("d"); n != 1 {
		t.Errorf("d was not evicted: n = %d", n)
	}
}

func TestEvictIdle(t *testing.T) {
	c := &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := New(Config{IdleTTL: time.Hour, Now: c.Now})
	one(t, m, "a", `{"sensor":"t","value":1}`)
	c.Advance(30 * time.Minute)
	one(t, m, "b", `{"sensor":"t","value":1}`)
	one(t, m, "b", `{"sensor":"u","value":1}`)
	c.Advance(30 * time.Minute) // a idle exactly IdleTTL: kept
	if n := m.EvictIdle(); n != 0 || m.Len() != 3 {
		t.Fatalf("at IdleTTL: evicted %d, Len %d", n, m.Len())
	}
	c.Advance(time.Nanosecond)
	if n := m.EvictIdle(); n != 1 || m.Len() != 2 {
		t.Fatalf("past IdleTTL: evicted %d, Len %d; want 1, 2", n, m.Len())
	}
	one(t, m, "b", `{"sensor":"t","value":1}`) // b/t used again
	c.Advance(31 * time.Minute)
	if n := m.EvictIdle(); n != 1 || m.Len() != 1 {
		t.Fatalf("b/u idle: evicted %d, Len %d; want 1, 1", n, m.Len())
	}
	if r := one(t, m, "b", `{"sensor":"t","value":1}`); r.N != 3 {
		t.Errorf("b/t lost its state: n = %d", r.N)
	}
	if r := one(t, m, "a", `{"sensor":"t","value":1}`); r.N != 1 {
		t.Errorf("a kept its state after eviction: n = %d", r.N)
	}
	c.Advance(2 * time.Hour)
	if n := m.EvictIdle(); n != 2 || m.Len() != 0 {
		t.Errorf("all idle: evicted %d, Len %d; want 2, 0", n, m.Len())
	}
}

func TestConfigDefaults(t *testing.T) {
	m := New(Config{MaxSeries: -1, IdleTTL: -time.Second})
	if m.cfg.MaxSeries != DefaultMaxSeries || m.cfg.IdleTTL != DefaultIdleTTL || m.cfg.Now == nil {
		t.Errorf("defaults not applied: %+v", m.cfg)
	}
}

// Run returns when its context ends (goleak checks nothing is left).
func TestRunStops(t *testing.T) {
	m := New(Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Run(ctx)
		close(done)
	}()
	cancel()
	<-done
}
