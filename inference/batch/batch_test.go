package batch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a run function that records its batches and can be held
// until the test releases it.
type recorder struct {
	mu      sync.Mutex
	batches [][]int
	entered chan []int    // receives each batch as run starts (buffered)
	gate    chan struct{} // run waits for a value (or close) when non-nil
	running atomic.Int64
	maxRun  atomic.Int64
}

func newRecorder(gated bool) *recorder {
	r := &recorder{entered: make(chan []int, 100)}
	if gated {
		r.gate = make(chan struct{})
	}
	return r
}

func (r *recorder) run(ctx context.Context, in []int) ([]string, error) {
	n := r.running.Add(1)
	defer r.running.Add(-1)
	for {
		m := r.maxRun.Load()
		if n <= m || r.maxRun.CompareAndSwap(m, n) {
			break
		}
	}
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(in))
	r.mu.Unlock()
	r.entered <- slices.Clone(in)
	if r.gate != nil {
		<-r.gate
	}
	out := make([]string, len(in))
	for i, x := range in {
		out[i] = fmt.Sprint("out", x)
	}
	return out, nil
}

func (r *recorder) seen() [][]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches)
}

type reply struct {
	in  int
	out string
	err error
}

// doAsync calls b.Do(ctx, x) in a goroutine and sends the reply on ch.
func doAsync[Out any](b *Batcher[int, Out], ctx context.Context, x int, ch chan<- reply) {
	go func() {
		out, err := b.Do(ctx, x)
		ch <- reply{x, fmt.Sprint(out), err}
	}()
}

// waitFor polls cond until it holds; the test fails after 10 s. It is for
// states that have no event to wait on (a request sitting in the queue).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFullBatchRunsBeforeDelay(t *testing.T) {
	rec := newRecorder(false)
	b := New(Options{MaxBatch: 4, MaxDelay: time.Hour, Workers: 1}, rec.run)
	defer b.Close()
	ch := make(chan reply, 4)
	for i := range 4 {
		doAsync(b, context.Background(), i, ch)
	}
	for range 4 {
		r := <-ch
		if r.err != nil || r.out != fmt.Sprint("out", r.in) {
			t.Errorf("Do(%d) = %q, %v", r.in, r.out, r.err)
		}
	}
	got := rec.seen()
	if len(got) != 1 || len(got[0]) != 4 {
		t.Fatalf("batches %v, want one batch of 4", got)
	}
	if s := b.Stats(); s.Batches != 1 || s.Items != 4 || s.Dropped != 0 || s.Waiting != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestDelayFlushesPartialBatch(t *testing.T) {
	rec := newRecorder(false)
	b := New(Options{MaxBatch: 8, MaxDelay: time.Millisecond, Workers: 1}, rec.run)
	defer b.Close()
	out, err := b.Do(context.Background(), 7)
	if err != nil || out != "out7" {
		t.Fatalf("Do = %q, %v", out, err)
	}
	if got := rec.seen(); len(got) != 1 || !slices.Equal(got[0], []int{7}) {
		t.Errorf("batches %v", got)
	}
}

// TestBatchGrowsWhileWorkersBusy holds the only worker and checks that the
// requests arriving meanwhile go into one batch, even with no delay.
func TestBatchGrowsWhileWorkersBusy(t *testing.T) {
	rec := newRecorder(true)
	b := New(Options{MaxBatch: 4, MaxDelay: 0, Workers: 1}, rec.run)
	defer b.Close()
	ch := make(chan reply, 10)
	doAsync(b, context.Background(), 0, ch)
	if got := <-rec.entered; !slices.Equal(got, []int{0}) {
		t.Fatalf("first batch %v", got)
	}
	for i := 1; i <= 6; i++ {
		doAsync(b, context.Background(), i, ch)
	}
	// Four fill the next batch; the other two wait to send.
	waitFor(t, "a full batch waiting", func() bool { return b.Stats().Waiting == 4 })
	close(rec.gate)
	for range 7 {
		if r := <-ch; r.err != nil {
			t.Errorf("Do(%d): %v", r.in, r.err)
		}
	}
	// The last two may run together or apart, as the worker frees up.
	got := rec.seen()
	if len(got) < 3 || len(got[0]) != 1 || len(got[1]) != 4 {
		t.Errorf("batches %v, want sizes 1, 4, then the other 2", got)
	}
	if s := b.Stats(); s.Items != 7 {
		t.Errorf("stats %+v", s)
	}
}

// TestCanceledRequestLeftOut cancels a queued request: it returns at once
// with its ctx error and its batch runs without it.
func TestCanceledRequestLeftOut(t *testing.T) {
	rec := newRecorder(true)
	b := New(Options{MaxBatch: 4, MaxDelay: 0, Workers: 1}, rec.run)
	defer b.Close()
	ch := make(chan reply, 10)
	doAsync(b, context.Background(), 0, ch)
	<-rec.entered
	ctx, cancel := context.WithCancel(context.Background())
	doAsync(b, ctx, 1, ch)
	waitFor(t, "request 1 queued", func() bool { return b.Stats().Waiting == 1 })
	doAsync(b, context.Background(), 2, ch)
	waitFor(t, "request 2 queued", func() bool { return b.Stats().Waiting == 2 })
	cancel()
	if r := <-ch; r.in != 1 || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("canceled request: %+v", r)
	}
	close(rec.gate)
	for range 2 {
		if r := <-ch; r.err != nil {
			t.Errorf("Do(%d): %v", r.in, r.err)
		}
	}
	got := rec.seen()
	if len(got) != 2 || !slices.Equal(got[1], []int{2}) {
		t.Errorf("batches %v, want [0] then [2]", got)
	}
	if s := b.Stats(); s.Dropped != 1 || s.Items != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestDeadlineBeforeDo(t *testing.T) {
	rec := newRecorder(false)
	for _, mb := range []int{1, 4} {
		b := New(Options{MaxBatch: mb, Workers: 1}, rec.run)
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		if _, err := b.Do(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("MaxBatch %d: err %v", mb, err)
		}
		cancel()
		b.Close()
	}
	if got := rec.seen(); len(got) != 0 {
		t.Errorf("expired requests ran: %v", got)
	}
}

// TestRunContextEndsWhenAllGiveUp: run's context is canceled only once
// every member of its batch is gone.
func TestRunContextEndsWhenAllGiveUp(t *testing.T) {
	started := make(chan struct{})
	ended := make(chan error, 1)
	b := New(Options{MaxBatch: 2, MaxDelay: time.Hour, Workers: 1}, func(ctx context.Context, in []int) ([]int, error) {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		return nil, ctx.Err()
	})
	defer b.Close()
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	go func() { _, err := b.Do(ctx1, 1); errs <- err }()
	go func() { _, err := b.Do(ctx2, 2); errs <- err }()
	<-started
	cancel1()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("first: %v", err)
	}
	select {
	case err := <-ended:
		t.Fatalf("run's context ended (%v) while a member still waits", err)
	default:
	}
	cancel2()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("second: %v", err)
	}
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("run's context: %v", err)
	}
}

func TestErrors(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name string
		run  func(ctx context.Context, in []int) ([]int, error)
		want func(in int) (int, string) // output, error substring ("" = no error)
	}{
		{"whole batch", func(ctx context.Context, in []int) ([]int, error) { return nil, boom },
			func(int) (int, string) { return 0, "boom" }},
		{"per item", func(ctx context.Context, in []int) ([]int, error) {
			out := make([]int, len(in))
			errs := make(Errors, len(in))
			for i, x := range in {
				out[i] = x * 10
				if x%2 == 1 {
					errs[i] = fmt.Errorf("odd %d", x)
				}
			}
			return out, fmt.Errorf("wrapped: %w", errs)
		}, func(x int) (int, string) {
			if x%2 == 1 {
				return 0, fmt.Sprint("odd ", x)
			}
			return x * 10, ""
		}},
		{"wrong output count", func(ctx context.Context, in []int) ([]int, error) { return make([]int, len(in)+1), nil },
			func(int) (int, string) { return 0, "outputs for" }},
		{"wrong error count", func(ctx context.Context, in []int) ([]int, error) { return nil, make(Errors, len(in)+1) },
			func(int) (int, string) { return 0, "item errors for" }},
		{"panic", func(ctx context.Context, in []int) ([]int, error) { panic("oops") },
			func(int) (int, string) { return 0, "panicked: oops" }},
	}
	for _, tc := range cases {
		for _, mb := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s/maxbatch%d", tc.name, mb), func(t *testing.T) {
				b := New(Options{MaxBatch: mb, MaxDelay: time.Hour, Workers: 1}, tc.run)
				defer b.Close()
				var wg sync.WaitGroup
				for x := range 4 {
					wg.Go(func() {
						out, err := b.Do(context.Background(), x)
						wantOut, wantErr := tc.want(x)
						if wantErr == "" {
							if err != nil || out != wantOut {
								t.Errorf("Do(%d) = %d, %v; want %d", x, out, err, wantOut)
							}
						} else if err == nil || !strings.Contains(err.Error(), wantErr) {
							t.Errorf("Do(%d) error %v, want %q", x, err, wantErr)
						}
					})
				}
				wg.Wait()
			})
		}
	}
}

func TestErrorsMessage(t *testing.T) {
	e := Errors{nil, errors.New("a"), errors.New("b")}
	if got := e.Error(); got != "batch: 2 of 3 items failed, the first: a" {
		t.Errorf("%q", got)
	}
	if got := (Errors{nil}).Error(); got != "batch: no item failed" {
		t.Errorf("%q", got)
	}
}

// TestCloseDrains closes while requests wait: they all complete, and later
// calls get ErrClosed.
func TestCloseDrains(t *testing.T) {
	for _, mb := range []int{1, 3} {
		t.Run(fmt.Sprint("maxbatch", mb), func(t *testing.T) {
			rec := newRecorder(true)
			b := New(Options{MaxBatch: mb, MaxDelay: 0, Workers: 1}, rec.run)
			ch := make(chan reply, 10)
			doAsync(b, context.Background(), 0, ch)
			<-rec.entered
			for i := 1; i <= 3; i++ {
				doAsync(b, context.Background(), i, ch)
			}
			waitFor(t, "queued requests", func() bool { return b.Stats().Waiting == 3 })
			closed := make(chan struct{})
			go func() { b.Close(); close(closed) }()
			if mb == 1 {
				// The passthrough callers hold the batcher open until they run.
				waitFor(t, "Close to start", func() bool {
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					defer cancel()
					_, err := b.Do(ctx, 99)
					return errors.Is(err, ErrClosed)
				})
			}
			select {
			case <-closed:
				t.Fatal("Close returned while a run was in flight")
			default:
			}
			close(rec.gate)
			for range 4 {
				if r := <-ch; r.err != nil {
					t.Errorf("Do(%d): %v", r.in, r.err)
				}
			}
			<-closed
			if _, err := b.Do(context.Background(), 5); !errors.Is(err, ErrClosed) {
				t.Errorf("Do after Close: %v", err)
			}
			b.Close() // twice is fine
		})
	}
}

func TestPassthroughLimitsConcurrency(t *testing.T) {
	rec := newRecorder(true)
	b := New(Options{MaxBatch: 1, Workers: 2}, rec.run)
	defer b.Close()
	ch := make(chan reply, 10)
	for i := range 5 {
		doAsync(b, context.Background(), i, ch)
	}
	<-rec.entered
	<-rec.entered
	select {
	case got := <-rec.entered:
		t.Fatalf("a third run started (%v) with Workers 2", got)
	default:
	}
	close(rec.gate)
	for range 5 {
		if r := <-ch; r.err != nil || r.out != fmt.Sprint("out", r.in) {
			t.Errorf("Do(%d) = %q, %v", r.in, r.out, r.err)
		}
	}
	for _, bt := range rec.seen() {
		if len(bt) != 1 {
			t.Errorf("passthrough ran a batch of %d", len(bt))
		}
	}
	if m := rec.maxRun.Load(); m > 2 {
		t.Errorf("%d runs at once", m)
	}
	if s := b.Stats(); s.Batches != 5 || s.Items != 5 {
		t.Errorf("stats %+v", s)
	}
}

func TestDefaults(t *testing.T) {
	b := New(Options{MaxDelay: -1}, func(ctx context.Context, in []int) ([]int, error) { return in, nil })
	defer b.Close()
	o := b.Options()
	if o.MaxBatch != DefaultMaxBatch || o.MaxDelay != 0 || o.Workers < 1 {
		t.Errorf("options %+v", o)
	}
	if out, err := b.Do(context.Background(), 3); err != nil || out != 3 {
		t.Errorf("Do = %d, %v", out, err)
	}
}

// TestConcurrentStress runs many callers, some canceling, against Close;
// every caller gets its own output or an error that says why.
func TestConcurrentStress(t *testing.T) {
	for _, mb := range []int{1, 8} {
		t.Run(fmt.Sprint("maxbatch", mb), func(t *testing.T) {
			b := New(Options{MaxBatch: mb, MaxDelay: 100 * time.Microsecond, Workers: 2}, func(ctx context.Context, in []int) ([]int, error) {
				out := make([]int, len(in))
				for i, x := range in {
					out[i] = -x
				}
				return out, nil
			})
			var wg sync.WaitGroup
			var ok, canceled, closed atomic.Int64
			half := make(chan struct{})
			for g := range 16 {
				wg.Go(func() {
					for i := range 200 {
						x := g*1000 + i
						ctx, cancel := context.WithCancel(context.Background())
						if i%7 == 0 {
							cancel()
						}
						out, err := b.Do(ctx, x)
						cancel()
						switch {
						case err == nil && out == -x:
							if ok.Add(1) == 1000 {
								close(half)
							}
						case errors.Is(err, context.Canceled):
							canceled.Add(1)
						case errors.Is(err, ErrClosed):
							closed.Add(1)
						default:
							t.Errorf("Do(%d) = %d, %v", x, out, err)
						}
					}
				})
			}
			wg.Go(func() {
				<-half // close mid-way
				b.Close()
			})
			wg.Wait()
			s := b.Stats()
			if ok.Load() < 1000 || s.Items != uint64(ok.Load()) {
				t.Errorf("ok %d canceled %d closed %d, stats %+v", ok.Load(), canceled.Load(), closed.Load(), s)
			}
		})
	}
}
