package anomaly

import "testing"

func BenchmarkStep(b *testing.B) {
	s := &series{}
	v := noise(2, 1000, 20, 1)
	p := DefaultParams
	var out Result
	i := 0
	for b.Loop() {
		out = Result{}
		s.step(v[i%1000], &p, &out)
		i++
	}
}

func BenchmarkRobust(b *testing.B) {
	s := &series{}
	for _, x := range noise(1, 64, 0, 1) {
		s.push(x, false)
	}
	for b.Loop() {
		s.robust()
	}
}
