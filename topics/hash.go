package topics

// Hash is a stable, well-mixed 64-bit hash of parts (FNV-1a over them, a 0
// byte between two parts, then splitmix64's finalizer, so that every bit of
// the input moves every bit of the result): the same in every process and
// every release, which is what spreads devices the same way on every node
// (a cluster's partitions, a canary's share). It does not allocate.
func Hash(parts ...string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i, p := range parts {
		if i > 0 {
			h *= prime // the 0 byte between parts: h ^ 0 is h
		}
		for j := 0; j < len(p); j++ {
			h = (h ^ uint64(p[j])) * prime
		}
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
