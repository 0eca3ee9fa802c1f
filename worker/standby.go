package worker

import (
	"container/list"
	"time"

	"github.com/mqttinfer/mqttinfer/mqttclient"
	"github.com/mqttinfer/mqttinfer/topics"
)

// held is a copy of a request of a partition this worker does not serve,
// kept until the worker that serves it has answered it: if that worker
// goes away first, the partition's next owner runs it. Every worker of a
// group receives every request, so every request is held by all but one.
type held struct {
	msg      mqttclient.Message
	topic    topics.Topic
	received time.Time
	key      heldKey
	// canceled: its device canceled it; the next owner answers it 499
	// without running it.
	canceled bool
	// streamed: a delta event of its stream has been seen (up to lastSeq):
	// its answer was under way and cannot be given again from the start.
	streamed bool
	lastSeq  int

	elem *list.Element // in its partition's list
}

// heldKey names a request the way every worker, and every reply, names it:
// its device and id (the content's id when the device sent none).
type heldKey struct{ device, id string }

// standby holds the copies of the requests of the partitions a worker does
// not serve, in arrival order per partition, and forgets each once its
// answer has been seen. It is owned by the session loop.
type standby struct {
	maxHeld int
	maxAge  time.Duration

	parts [Partitions]list.List
	byKey map[heldKey][]*held // oldest first: a device may send the same id twice
	n     int

	// early are the replies seen with no copy held (yet): the broker may
	// hand this worker another worker's reply before the request (they come
	// from different clients). A copy that arrives after its final reply is
	// dropped; one that arrives after stream events is marked streamed.
	early     map[heldKey]earlyReply
	earlyList list.List // of earlyEntry, oldest first

	dropped int // copies dropped for lack of room or age, since takeDropped
}

// earlyReply is what was seen of a request's replies before its copy.
type earlyReply struct {
	at      time.Time
	final   bool
	lastSeq int // of the stream events seen, when not final
}

type earlyEntry struct {
	key heldKey
	at  time.Time
}

// earlyTTL is how long a reply seen without a copy is remembered.
const earlyTTL = 10 * time.Second

func newStandby(maxHeld int, maxAge time.Duration) *standby {
	return &standby{maxHeld: maxHeld, maxAge: maxAge, byKey: map[heldKey][]*held{}, early: map[heldKey]earlyReply{}}
}

// hold keeps a copy of a request for partition k. It reports false when
// the copy is not kept: its answer was seen already, or there is no room.
func (s *standby) hold(k int, h *held) bool {
	if e, ok := s.early[h.key]; ok {
		if e.final {
			return false
		}
		h.streamed, h.lastSeq = true, e.lastSeq
	}
	if s.n >= s.maxHeld {
		s.dropped++
		return false
	}
	h.elem = s.parts[k].PushBack(h)
	s.byKey[h.key] = append(s.byKey[h.key], h)
	s.n++
	return true
}

// cancel marks the oldest copy of key as canceled by its device.
func (s *standby) cancel(key heldKey) {
	for _, h := range s.byKey[key] {
		if !h.canceled {
			h.canceled = true
			return
		}
	}
}

// delta notes a stream event of the request key.
func (s *standby) delta(key heldKey, seq int, now time.Time) {
	if hs := s.byKey[key]; len(hs) > 0 {
		h := hs[0]
		h.streamed = true
		h.lastSeq = max(h.lastSeq, seq)
		return
	}
	e := s.early[key]
	if !e.final {
		s.remember(key, earlyReply{at: now, lastSeq: max(e.lastSeq, seq)})
	}
}

// done forgets the oldest copy of key: its final reply was seen.
func (s *standby) done(key heldKey, now time.Time) {
	if hs := s.byKey[key]; len(hs) > 0 {
		s.remove(hs[0])
		return
	}
	s.remember(key, earlyReply{at: now, final: true})
}

func (s *standby) remember(key heldKey, e earlyReply) {
	if _, ok := s.early[key]; !ok {
		s.earlyList.PushBack(earlyEntry{key, e.at})
	}
	s.early[key] = e
}

func (s *standby) remove(h *held) {
	s.parts[Partition(h.key.device)].Remove(h.elem)
	hs := s.byKey[h.key]
	for i, x := range hs {
		if x == h {
			hs = append(hs[:i], hs[i+1:]...)
			break
		}
	}
	if len(hs) == 0 {
		delete(s.byKey, h.key)
	} else {
		s.byKey[h.key] = hs
	}
	s.n--
}

// take removes and returns the copies of partition k, oldest first.
func (s *standby) take(k int) []*held {
	var out []*held
	for e := s.parts[k].Front(); e != nil; e = s.parts[k].Front() {
		h := e.Value.(*held)
		s.remove(h)
		out = append(out, h)
	}
	return out
}

// expire drops the copies older than maxAge (nobody answered them in
// time: no owner could run them before their deadline anyway) and
// forgets old answers. It returns how many copies it dropped.
func (s *standby) expire(now time.Time) int {
	n := 0
	for k := range s.parts {
		for e := s.parts[k].Front(); e != nil; e = s.parts[k].Front() {
			h := e.Value.(*held)
			if now.Sub(h.received) <= s.maxAge {
				break
			}
			s.remove(h)
			n++
		}
	}
	for e := s.earlyList.Front(); e != nil; e = s.earlyList.Front() {
		a := e.Value.(earlyEntry)
		if now.Sub(a.at) <= earlyTTL {
			break
		}
		s.earlyList.Remove(e)
		delete(s.early, a.key)
	}
	s.dropped += n
	return n
}

// takeDropped returns the copies dropped since its last call.
func (s *standby) takeDropped() int {
	n := s.dropped
	s.dropped = 0
	return n
}

// len is the number of copies held.
func (s *standby) len() int { return s.n }
