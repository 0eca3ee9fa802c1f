package worker

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"slices"
	"strconv"
	"time"
)

// Partitions is the number of partitions the devices are spread over: a
// device belongs to partition Partition(device), and the remote workers of
// a group own the partitions, one worker each at a time.
const Partitions = 256

// Partition is the partition of a device: an FNV-1a hash of its id.
func Partition(device string) int {
	h := fnv.New32a()
	h.Write([]byte(device))
	return int(h.Sum32() % Partitions)
}

// partSet is a set of partitions.
type partSet [Partitions / 64]uint64

func (s *partSet) has(k int) bool { return s[k/64]&(1<<(k%64)) != 0 }
func (s *partSet) add(k int)      { s[k/64] |= 1 << (k % 64) }
func (s *partSet) del(k int)      { s[k/64] &^= 1 << (k % 64) }

func (s *partSet) len() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

func (s *partSet) intersects(o *partSet) bool {
	for i := range s {
		if s[i]&o[i] != 0 {
			return true
		}
	}
	return false
}

// list is the set's partitions in ascending order (never nil, for JSON).
func (s *partSet) list() []int {
	out := []int{}
	for k := range Partitions {
		if s.has(k) {
			out = append(out, k)
		}
	}
	return out
}

func partSetOf(ks []int) partSet {
	var s partSet
	for _, k := range ks {
		if k >= 0 && k < Partitions {
			s.add(k)
		}
	}
	return s
}

// GroupState is a remote worker's part in its group's ownership protocol,
// published in its status (Status.Partitions).
type GroupState struct {
	// Count is the number of partitions (Partitions).
	Count int `json:"count"`
	// Claimed are the partitions the worker claims: it serves them, waits
	// to serve them, or finishes their requests before letting them go.
	Claimed []int `json:"claimed"`
	// Serving is how many of them it serves now.
	Serving int `json:"serving"`
	// Version counts the changes of Claimed.
	Version uint64 `json:"version"`
	// Acks maps the incarnation of each other worker to the version of its
	// claims this worker agrees to: it claims none of the partitions that
	// worker claimed at that version.
	Acks map[string]uint64 `json:"acks,omitempty"`
}

// member is what a worker knows of another worker of its group, from its
// latest status.
type member struct {
	node     string
	inc      string
	leaving  bool
	claims   partSet
	claimVer uint64
	acks     map[string]uint64
	seen     time.Time // when its latest status was published, or received
}

// groupChange is what the transport must do after the group's state moved.
type groupChange struct {
	publish bool  // this worker's status changed: publish it
	start   []int // partitions to start serving afresh (their held requests first)
	resume  []int // partitions let go of and kept after all: serve them again (held requests first)
	stop    []int // partitions to stop taking requests for (their running ones finish)
}

// group decides which partitions this worker serves. The workers of a
// group find each other through their retained statuses (and last wills)
// and agree on owners in three steps, so that no partition is ever served
// by two of them, even while they see different members for a moment:
//
//  1. Rendezvous hashing over the live members (a member that announced it
//     is leaving is no candidate) gives each partition one desired owner.
//  2. A worker claims the partitions it desires that no member claims, and
//     lets go of those it does not desire: it stops taking their requests
//     and unclaims them only when their running requests have finished.
//  3. It serves a claimed partition once every other member has acked the
//     version of its claims that added it; a member acks another's claims
//     only while it claims none of them.
//
// A member that disconnects (its will) or stays silent past the timeout is
// gone; its claims are free. group is not safe for concurrent use: the
// remote worker's session loop owns it.
type group struct {
	node, inc string
	timeout   time.Duration // a member silent this long is gone
	busy      func(k int) bool

	members map[string]*member // by node
	ready   bool               // our own status has come back: the retained statuses before it are known
	leaving bool

	claims   partSet
	claimVer uint64
	added    [Partitions]uint64 // claim version that added each claimed partition
	serving  partSet
	draining partSet // not served any more, unclaimed once idle
	acks     map[string]uint64

	scores map[string]*[Partitions]uint64 // rendezvous scores by node
	gone   map[string]bool                // incarnations that have ended
	buried []string                       // gone, oldest first (bounded)
}

func newGroup(node, inc string, timeout time.Duration, busy func(int) bool) *group {
	return &group{node: node, inc: inc, timeout: timeout, busy: busy,
		members: map[string]*member{}, acks: map[string]uint64{}, scores: map[string]*[Partitions]uint64{}, gone: map[string]bool{}}
}

// serves reports whether this worker serves partition k now.
func (g *group) serves(k int) bool { return g.serving.has(k) }

// state is this worker's part of the protocol, for its status.
func (g *group) state() *GroupState {
	acks := make(map[string]uint64, len(g.acks))
	for k, v := range g.acks {
		acks[k] = v
	}
	return &GroupState{Count: Partitions, Claimed: g.claims.list(), Serving: g.serving.len(), Version: g.claimVer, Acks: acks}
}

// readiness says why the group is not ready to serve every device (nil
// when it is): this worker has not joined yet, is leaving, or partitions
// have no owner yet.
func (g *group) readiness() error {
	switch {
	case !g.ready:
		return errors.New("joining the group")
	case g.leaving:
		return errors.New("leaving the group")
	}
	free, moving := 0, 0
	desired := g.desired()
	for k := range Partitions {
		if !g.claims.has(k) && !g.claimedByOther(k) {
			free++
		}
		if desired.has(k) != g.serving.has(k) {
			moving++
		}
	}
	switch {
	case free > 0:
		return fmt.Errorf("%d of %d partitions have no worker yet", free, Partitions)
	case moving > 0:
		return fmt.Errorf("%d partitions are moving to or from this worker", moving)
	}
	return nil
}

// idle reports whether this worker claims nothing (after leave: it may go).
func (g *group) idle() bool { return g.claims.len() == 0 }

// status takes another worker's status (or this worker's own, coming back).
// retained says the broker kept it from before this worker subscribed. A
// status of this worker's node from another incarnation (a predecessor's,
// or its will) may have overwritten this worker's on the broker: it is
// published again.
func (g *group) status(st Status, retained bool, now time.Time) groupChange {
	at := time.UnixMilli(st.At)
	if st.Node == g.node {
		switch {
		case st.Incarnation != g.inc:
			return groupChange{publish: true}
		case !g.ready:
			g.ready = true
			return g.evaluate(now)
		}
		return groupChange{}
	}
	if g.gone[st.Incarnation] {
		// A late status of an incarnation that has ended: statuses of
		// different incarnations of a node can arrive out of order.
		return groupChange{}
	}
	m := g.members[st.Node]
	switch {
	case st.State == "offline":
		g.bury(st.Incarnation)
		if m != nil && m.inc == st.Incarnation {
			delete(g.members, st.Node)
		}
		return g.evaluate(now)
	case st.Partitions == nil || st.Partitions.Count != Partitions:
		return groupChange{} // not a member that speaks this protocol
	}
	// A retained status is taken as fresh: a member's clock may be behind
	// this worker's, and declaring a live member gone could have two
	// workers serve its partitions. Only one stamped long before any
	// plausible clock skew (a status the broker kept through a restart, of
	// a worker that never came back) counts as gone at once.
	seen := now
	if retained && st.At > 0 && now.Sub(at) > staleRetained {
		seen = at
	}
	if m == nil || m.inc != st.Incarnation {
		if m != nil {
			g.bury(m.inc) // a node's new incarnation ends its old one
		}
		m = &member{node: st.Node, inc: st.Incarnation}
		g.members[st.Node] = m
	}
	m.leaving = st.State == "leaving"
	m.claims = partSetOf(st.Partitions.Claimed)
	m.claimVer = st.Partitions.Version
	m.acks = st.Partitions.Acks
	m.seen = seen
	return g.evaluate(now)
}

// leave starts a graceful departure: every partition is let go of, after
// its running requests. idle turns true once all are.
func (g *group) leave(now time.Time) groupChange {
	g.leaving = true
	c := g.evaluate(now)
	c.publish = true
	return c
}

// staleRetained is the age past which a retained status of a member is
// taken for a leftover rather than a live member with a skewed clock.
const staleRetained = 10 * time.Minute

// maxGone bounds the ended incarnations remembered.
const maxGone = 1024

// bury remembers that incarnation inc has ended.
func (g *group) bury(inc string) {
	if inc == "" || g.gone[inc] {
		return
	}
	g.gone[inc] = true
	g.buried = append(g.buried, inc)
	if len(g.buried) > maxGone {
		delete(g.gone, g.buried[0])
		g.buried = g.buried[1:]
	}
}

// evaluate applies the protocol's rules to what the group knows now.
func (g *group) evaluate(now time.Time) groupChange {
	var c groupChange
	for node, m := range g.members {
		if now.Sub(m.seen) > g.timeout {
			delete(g.members, node) // silent too long: gone
			g.bury(m.inc)
		}
	}
	desired := g.desired()

	// Let go of what is not ours (after its running requests), and take
	// back what is ours again while it drains.
	changed := false
	for k := range Partitions {
		if !g.claims.has(k) {
			continue
		}
		switch {
		case desired.has(k) && g.draining.has(k):
			g.draining.del(k)
			g.serving.add(k)
			c.resume = append(c.resume, k)
		case desired.has(k):
		case g.serving.has(k):
			g.serving.del(k)
			g.draining.add(k)
			c.stop = append(c.stop, k)
		}
		if !desired.has(k) && (!g.draining.has(k) || !g.busy(k)) {
			g.draining.del(k)
			g.claims.del(k)
			changed = true
		}
	}
	// Claim what is ours and claimed by no one.
	var fresh []int
	for k := range Partitions {
		if desired.has(k) && !g.claims.has(k) && !g.claimedByOther(k) {
			fresh = append(fresh, k)
		}
	}
	if changed || len(fresh) > 0 {
		g.claimVer++
		c.publish = true
	}
	for _, k := range fresh {
		g.claims.add(k)
		g.added[k] = g.claimVer
	}
	// Ack the members whose claims do not collide with ours.
	for inc := range g.acks {
		if !g.hasIncarnation(inc) {
			delete(g.acks, inc)
			c.publish = true
		}
	}
	for _, m := range g.members {
		if !m.claims.intersects(&g.claims) && g.acks[m.inc] != m.claimVer {
			g.acks[m.inc] = m.claimVer
			c.publish = true
		}
	}
	// Serve what every member has agreed to.
	for k := range Partitions {
		if g.claims.has(k) && !g.serving.has(k) && !g.draining.has(k) && g.agreed(k) {
			g.serving.add(k)
			c.start = append(c.start, k)
		}
	}
	return c
}

// desired are the partitions rendezvous hashing gives this worker among
// the live candidates (none before its view is complete, or while it
// leaves).
func (g *group) desired() partSet {
	var d partSet
	if !g.ready || g.leaving {
		return d
	}
	cands := []string{g.node}
	for node, m := range g.members {
		if !m.leaving {
			cands = append(cands, node)
		}
	}
	slices.Sort(cands) // equal scores go to the smallest node id
	scores := make([]*[Partitions]uint64, len(cands))
	for i, n := range cands {
		scores[i] = g.scoresOf(n)
	}
	for k := range Partitions {
		best, bestScore := "", uint64(0)
		for i, n := range cands {
			if s := scores[i][k]; best == "" || s > bestScore {
				best, bestScore = n, s
			}
		}
		if best == g.node {
			d.add(k)
		}
	}
	return d
}

// scoresOf returns node's rendezvous scores, computed once per node.
func (g *group) scoresOf(node string) *[Partitions]uint64 {
	sc := g.scores[node]
	if sc == nil {
		sc = new([Partitions]uint64)
		for k := range sc {
			sc[k] = score(node, k)
		}
		if len(g.scores) > 4096 {
			clear(g.scores) // nodes come and go; do not keep them forever
		}
		g.scores[node] = sc
	}
	return sc
}

// score is node's rendezvous score for partition k.
func score(node string, k int) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node))
	h.Write([]byte{'/'})
	h.Write(strconv.AppendInt(nil, int64(k), 10))
	// FNV's low bits mix poorly across similar inputs: finish with a
	// multiplicative avalanche (the SplitMix64 finaliser).
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func (g *group) claimedByOther(k int) bool {
	for _, m := range g.members {
		if m.claims.has(k) {
			return true
		}
	}
	return false
}

// agreed reports whether every member has acked the claim that added k
// and claims k itself no more.
func (g *group) agreed(k int) bool {
	for _, m := range g.members {
		if m.claims.has(k) || m.acks[g.inc] < g.added[k] {
			return false
		}
	}
	return true
}

func (g *group) hasIncarnation(inc string) bool {
	for _, m := range g.members {
		if m.inc == inc {
			return true
		}
	}
	return false
}
