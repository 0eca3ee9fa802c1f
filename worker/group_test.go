package worker

import (
	"container/heap"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestPartitionSpreadsDevices(t *testing.T) {
	counts := make([]int, Partitions)
	const n = 100000
	for i := range n {
		counts[Partition(fmt.Sprintf("sensor-%05d", i))]++
	}
	mean := n / Partitions
	for k, c := range counts {
		if c < mean/2 || c > mean*3/2 {
			t.Errorf("partition %d holds %d devices, mean %d", k, c, mean)
		}
	}
}

// The simulation below runs the ownership protocol of several workers
// against a model of a broker: each status a worker publishes reaches every
// other live worker after a random delay, in the order that worker
// published them (per-publisher order, which every broker keeps); the
// broker keeps the latest status of each node (retained) for workers that
// join, and publishes a worker's will (offline) after its last status when
// it crashes. Workers join, leave gracefully and crash at random while
// partitions drain for random times. After every step no partition may be
// served by two live workers; once nothing changes any more, every
// partition is served by exactly one.

type simEvent struct {
	at  time.Duration
	seq int
	do  func()
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type simWorker struct {
	name    string
	inc     string
	order   int
	evalDue bool
	g       *group
	alive   bool
	busy    map[int]bool             // partitions with requests running
	gen     map[int]int              // starts of each partition, so that a stale drain is ignored
	linkAt  map[string]time.Duration // per receiver: when the last message to it arrives (FIFO)
}

type sim struct {
	t        *testing.T
	rng      *rand.Rand
	now      time.Duration
	seq      int
	q        simQueue
	workers  map[string]*simWorker
	retained map[string]Status
	incs     int
	maxDelay time.Duration
}

var simEpoch = time.Unix(1_800_000_000, 0)

func (s *sim) clock() time.Time { return simEpoch.Add(s.now) }

func (s *sim) after(d time.Duration, f func()) {
	s.seq++
	heap.Push(&s.q, &simEvent{at: s.now + d, seq: s.seq, do: f})
}

// send delivers st from w to every other live worker, FIFO per pair.
func (s *sim) send(w *simWorker, st Status) {
	s.retained[w.name] = st
	for _, r := range s.sorted() {
		if !r.alive {
			continue
		}
		d := time.Duration(s.rng.Int64N(int64(s.maxDelay)))
		at := max(s.now+d, w.linkAt[r.inc])
		w.linkAt[r.inc] = at
		r := r
		s.seq++
		heap.Push(&s.q, &simEvent{at: at, seq: s.seq, do: func() { s.deliver(r, st, false) }})
	}
}

func (s *sim) deliver(r *simWorker, st Status, retained bool) {
	if !r.alive {
		return
	}
	s.apply(r, r.g.status(st, retained, s.clock()))
}

func (s *sim) statusOf(w *simWorker, state string) Status {
	return Status{Node: w.name, State: state, Transport: "remote", Group: "g", Incarnation: w.inc,
		Partitions: w.g.state(), At: s.clock().UnixMilli()}
}

// apply carries out a change: a served partition always has requests
// running; a stopped one drains for a while.
func (s *sim) apply(w *simWorker, c groupChange) {
	for _, k := range append(c.start, c.resume...) {
		w.busy[k] = true
		w.gen[k]++
	}
	for _, k := range c.stop {
		k, gen := k, w.gen[k]
		// Most partitions have nothing running; some finish a request
		// within a few hundred milliseconds.
		drain := time.Duration(s.rng.IntN(4)) * 70 * time.Millisecond
		s.after(drain, func() {
			if !w.alive || w.gen[k] != gen {
				return
			}
			w.busy[k] = false
			// The session loop sees the drains of one moment together.
			if !w.evalDue {
				w.evalDue = true
				s.after(0, func() {
					w.evalDue = false
					if w.alive {
						s.apply(w, w.g.evaluate(s.clock()))
					}
				})
			}
		})
	}
	if c.publish {
		state := "online"
		if w.g.leaving {
			state = "leaving"
		}
		s.send(w, s.statusOf(w, state))
	}
	s.check()
	if w.g.leaving && w.g.idle() && w.alive {
		s.send(w, s.statusOf(w, "offline"))
		w.alive = false
	}
}

func (s *sim) join(name string) {
	s.incs++
	w := &simWorker{name: name, inc: fmt.Sprintf("inc%d", s.incs), order: s.incs, alive: true, busy: map[int]bool{}, gen: map[int]int{}, linkAt: map[string]time.Duration{}}
	w.g = newGroup(name, w.inc, 30*time.Second, func(k int) bool { return w.busy[k] })
	s.workers[w.inc] = w
	// Subscribing delivers the retained statuses first, then the worker
	// publishes its own, which comes back after them.
	nodes := slices.Sorted(maps.Keys(s.retained))
	for _, node := range nodes {
		s.deliver(w, s.retained[node], true)
	}
	s.send(w, s.statusOf(w, "online"))
	s.after(s.maxDelay, func() { s.deliver(w, s.statusOf(w, "online"), false) }) // the echo
}

func (s *sim) crash(w *simWorker) {
	w.alive = false
	s.send(w, Status{Node: w.name, State: "offline", Incarnation: w.inc, At: s.clock().UnixMilli()})
}

// sorted is every worker ever started, in the order they started: the
// simulation iterates in it so that a seed always runs the same way.
func (s *sim) sorted() []*simWorker {
	out := make([]*simWorker, 0, len(s.workers))
	for _, w := range s.workers {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *simWorker) int { return a.order - b.order })
	return out
}

func (s *sim) live() []*simWorker {
	var out []*simWorker
	for _, w := range s.sorted() {
		if w.alive {
			out = append(out, w)
		}
	}
	return out
}

func (s *sim) check() {
	s.t.Helper()
	for k := range Partitions {
		var by []string
		for _, w := range s.live() {
			// A partition let go of is still in use while its running
			// requests finish.
			if w.g.serves(k) || w.busy[k] {
				by = append(by, w.name+"/"+w.inc)
			}
		}
		if len(by) > 1 {
			s.t.Fatalf("t=%v: partition %d served by %v", s.now, k, by)
		}
	}
}

func (s *sim) run(until time.Duration) {
	for s.q.Len() > 0 && s.q[0].at <= until {
		e := heap.Pop(&s.q).(*simEvent)
		s.now = e.at
		e.do()
	}
	s.now = until
}

func TestGroupNeverServesAPartitionTwice(t *testing.T) {
	for seed := range uint64(16) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, 7)), workers: map[string]*simWorker{}, retained: map[string]Status{},
				maxDelay: time.Duration(1+seed%5) * 20 * time.Millisecond}
			names := []string{"w1", "w2", "w3", "w4", "w5"}
			for _, n := range names[:2] {
				s.join(n)
			}
			// Heartbeats keep every live worker's status fresh.
			var beat func()
			beat = func() {
				for _, w := range s.live() {
					if !w.g.leaving {
						s.send(w, s.statusOf(w, "online"))
					}
					s.apply(w, w.g.evaluate(s.clock()))
				}
				s.after(5*time.Second, beat)
			}
			s.after(5*time.Second, beat)
			for range 30 {
				s.run(s.now + time.Duration(s.rng.Int64N(int64(300*time.Millisecond))))
				live := s.live()
				switch op := s.rng.IntN(4); {
				case op == 0 && len(live) < len(names):
					used := map[string]bool{}
					for _, w := range live {
						used[w.name] = true
					}
					for _, n := range names {
						if !used[n] {
							s.join(n)
							break
						}
					}
				case op == 1 && len(live) > 1:
					s.crash(live[s.rng.IntN(len(live))])
				case op == 2 && len(live) > 1:
					w := live[s.rng.IntN(len(live))]
					if !w.g.leaving {
						s.apply(w, w.g.leave(s.clock()))
					}
				}
			}
			// Quiet: everything settles to one owner per partition.
			s.run(s.now + 40*time.Second)
			owners := make([]int, Partitions)
			for _, w := range s.live() {
				for k := range Partitions {
					if w.g.serves(k) {
						owners[k]++
					}
				}
			}
			if len(s.live()) == 0 {
				return
			}
			for k, n := range owners {
				if n != 1 {
					t.Fatalf("after settling, partition %d has %d owners (%d live workers)", k, n, len(s.live()))
				}
			}
		})
	}
}

// TestGroupSplitsAndFailsOver: three workers split the partitions about
// evenly; when one crashes, the other two take its partitions at once.
func TestGroupSplitsAndFailsOver(t *testing.T) {
	s := &sim{t: t, rng: rand.New(rand.NewPCG(1, 2)), workers: map[string]*simWorker{}, retained: map[string]Status{}, maxDelay: time.Millisecond}
	s.join("a")
	s.join("b")
	s.join("c")
	s.run(time.Second)
	counts := map[string]int{}
	for _, w := range s.live() {
		for k := range Partitions {
			if w.g.serves(k) {
				counts[w.name]++
			}
		}
	}
	total := 0
	for name, n := range counts {
		total += n
		if n < Partitions/3*2/3 || n > Partitions/3*4/3 {
			t.Errorf("%s serves %d of %d partitions", name, n, Partitions)
		}
	}
	if total != Partitions {
		t.Fatalf("%d partitions served: %v", total, counts)
	}
	var b *simWorker
	for _, w := range s.live() {
		if w.name == "b" {
			b = w
		}
	}
	s.crash(b)
	s.run(s.now + 10*time.Millisecond) // a few message delays, no timeout
	served := 0
	for _, w := range s.live() {
		served += w.g.serving.len()
	}
	if served != Partitions {
		t.Fatalf("after b crashed, %d partitions are served", served)
	}
}
