package worker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// dedupClock is a settable clock for the Dedup's TTL.
type dedupClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *dedupClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *dedupClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func dedupTestKey(device, id string) DedupKey {
	return DedupKey{Version: "v1", Device: device, Model: "sum", ID: id}
}

func mustBeginDedup(t *testing.T, d *Dedup, k DedupKey) ([]byte, bool) {
	t.Helper()
	reply, dup, err := d.Begin(context.Background(), k)
	if err != nil {
		t.Fatalf("Begin(%v): %v", k, err)
	}
	return reply, dup
}

func TestDedupRemembersReply(t *testing.T) {
	clock := &dedupClock{t: time.Unix(1000, 0)}
	d := NewDedup(time.Minute, 0, clock.Now)
	k := dedupTestKey("d1", "r1")

	if _, dup := mustBeginDedup(t, d, k); dup {
		t.Fatal("first copy reported as duplicate")
	}
	d.Finish(k, []byte("reply-1"), true)

	reply, dup := mustBeginDedup(t, d, k)
	if !dup || string(reply) != "reply-1" {
		t.Fatalf("second copy: dup=%v reply=%q, want dup with reply-1", dup, reply)
	}

	// Other devices, models, versions and ids are other requests.
	for _, other := range []DedupKey{
		dedupTestKey("d2", "r1"),
		dedupTestKey("d1", "r2"),
		{Version: "v2", Device: "d1", Model: "sum", ID: "r1"},
		{Version: "v1", Device: "d1", Model: "other", ID: "r1"},
	} {
		if _, dup := mustBeginDedup(t, d, other); dup {
			t.Errorf("%v reported as a duplicate of %v", other, k)
		}
		d.Finish(other, nil, true)
	}
}

func TestDedupExpires(t *testing.T) {
	clock := &dedupClock{t: time.Unix(1000, 0)}
	d := NewDedup(time.Minute, 0, clock.Now)
	k := dedupTestKey("d1", "r1")
	mustBeginDedup(t, d, k)
	d.Finish(k, []byte("old"), true)

	clock.Add(59 * time.Second)
	if _, dup := mustBeginDedup(t, d, k); !dup {
		t.Fatal("reply forgotten before its TTL")
	}
	clock.Add(time.Second)
	if _, dup := mustBeginDedup(t, d, k); dup {
		t.Fatal("reply still remembered at its TTL")
	}
	d.Finish(k, []byte("new"), true)
	if reply, _ := mustBeginDedup(t, d, k); string(reply) != "new" {
		t.Fatalf("reply after expiry = %q, want the new one", reply)
	}
	if n := d.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
}

func TestDedupBoundedSize(t *testing.T) {
	d := NewDedup(time.Hour, 2, nil)
	for _, id := range []string{"a", "b", "c"} {
		mustBeginDedup(t, d, dedupTestKey("d1", id))
		d.Finish(dedupTestKey("d1", id), []byte(id), true)
	}
	if n := d.Len(); n != 2 {
		t.Fatalf("Len = %d, want the bound 2", n)
	}
	// Oldest out: "a" is forgotten, "b" and "c" are remembered.
	for _, tc := range []struct {
		id  string
		dup bool
	}{{"b", true}, {"c", true}, {"a", false}} {
		if _, dup := mustBeginDedup(t, d, dedupTestKey("d1", tc.id)); dup != tc.dup {
			t.Errorf("%s: dup = %v, want %v", tc.id, dup, tc.dup)
		}
	}
}

// pollUntil polls cond until it holds or a generous deadline passes.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDedupDuplicateWaitsForFirstCopy(t *testing.T) {
	for _, keep := range []bool{true, false} {
		d := NewDedup(time.Minute, 0, nil)
		k := dedupTestKey("d1", "r1")
		mustBeginDedup(t, d, k)

		const copies = 3
		type answer struct {
			reply []byte
			dup   bool
			err   error
		}
		answers := make(chan answer, copies)
		for range copies {
			go func() {
				reply, dup, err := d.Begin(context.Background(), k)
				answers <- answer{reply, dup, err}
			}()
		}
		pollUntil(t, "the copies to wait", func() bool { return d.Waiting() == copies })
		d.Finish(k, []byte("only-run"), keep)
		for range copies {
			a := <-answers
			if a.err != nil || !a.dup || string(a.reply) != "only-run" {
				t.Fatalf("keep=%v: waiting copy got %+v, want the first copy's reply", keep, a)
			}
		}
		// Without keep (a transient outcome), a later retry runs again.
		if _, dup := mustBeginDedup(t, d, k); dup != keep {
			t.Fatalf("keep=%v: later copy dup = %v", keep, dup)
		}
	}
}

func TestDedupWaitCanceled(t *testing.T) {
	d := NewDedup(time.Minute, 0, nil)
	k := dedupTestKey("d1", "r1")
	mustBeginDedup(t, d, k)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := d.Begin(ctx, k)
		errc <- err
	}()
	pollUntil(t, "the copy to wait", func() bool { return d.Waiting() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Begin after cancel = %v, want context.Canceled", err)
	}
	if n := d.Waiting(); n != 0 {
		t.Fatalf("Waiting = %d after the wait ended", n)
	}
}

func TestDedupZeroTTLRemembersNothing(t *testing.T) {
	d := NewDedup(0, 0, nil)
	k := dedupTestKey("d1", "r1")
	mustBeginDedup(t, d, k)
	d.Finish(k, []byte("x"), true)
	if _, dup := mustBeginDedup(t, d, k); dup {
		t.Fatal("a zero TTL remembered a reply")
	}
	d.Finish(k, []byte("x"), true)
	d.Finish(k, []byte("again"), true) // a stray second Finish is harmless
	if n := d.Len(); n != 0 {
		t.Fatalf("Len = %d, want 0", n)
	}
}
