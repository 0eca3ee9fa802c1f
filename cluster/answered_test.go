package cluster

import (
	"strconv"
	"testing"
)

func TestAnsweredKeepsTheLastN(t *testing.T) {
	a := newAnswered(3)
	for i := range 5 {
		a.add(strconv.Itoa(i))
	}
	a.add("4") // again: no room taken
	for i, want := range []bool{false, false, true, true, true} {
		if got := a.has(strconv.Itoa(i)); got != want {
			t.Errorf("has(%d) = %v, want %v", i, got, want)
		}
	}
	if len(a.set) != 3 {
		t.Errorf("%d keys held, want 3", len(a.set))
	}
}
