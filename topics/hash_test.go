package topics

import (
	"hash/fnv"
	"testing"
)

// TestHashIsFNVThenMix: Hash is FNV-1a of the parts joined by a 0 byte,
// finalized with splitmix64, so that the spreads made with it before it
// was shared (cluster partitions, canary shares) do not move.
func TestHashIsFNVThenMix(t *testing.T) {
	for _, parts := range [][]string{{"dev-1"}, {"model", "dev-1"}, {""}, {"a", "", "b"}} {
		h := fnv.New64a()
		for i, p := range parts {
			if i > 0 {
				h.Write([]byte{0})
			}
			h.Write([]byte(p))
		}
		x := h.Sum64()
		x ^= x >> 30
		x *= 0xbf58476d1ce4e5b9
		x ^= x >> 27
		x *= 0x94d049bb133111eb
		x ^= x >> 31
		if got := Hash(parts...); got != x {
			t.Errorf("Hash(%q) = %#x, want %#x", parts, got, x)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Hash("model", "dev-1") }); n != 0 {
		t.Errorf("Hash allocates %v times", n)
	}
}
