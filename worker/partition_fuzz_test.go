package worker

import (
	"hash/fnv"
	"testing"
)

// FuzzPartition checks that every device id, valid or not, falls in one of
// the Partitions partitions, always the same one: the FNV-1a hash of the id
// modulo Partitions, which every worker of a group, whatever its version,
// must compute alike.
func FuzzPartition(f *testing.F) {
	for _, s := range []string{"thermo-1", "sim-3f2a9c-0001", "cam.7", "", "d", "\xff\x00", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, device string) {
		p := Partition(device)
		if p < 0 || p >= Partitions {
			t.Fatalf("Partition(%q) = %d, outside [0, %d)", device, p, Partitions)
		}
		if again := Partition(string([]byte(device))); again != p {
			t.Fatalf("Partition(%q) = %d, then %d", device, p, again)
		}
		h := fnv.New32a()
		h.Write([]byte(device))
		if want := int(h.Sum32() % Partitions); p != want {
			t.Fatalf("Partition(%q) = %d, want %d (FNV-1a mod %d)", device, p, want, Partitions)
		}
	})
}
