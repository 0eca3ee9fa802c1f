package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRuntime: a node's registry has the Go, process and scheduler-latency
// metrics, the last as a histogram with buckets.
func TestRuntime(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Runtime()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"go_goroutines": false, "process_resident_memory_bytes": false, "go_sched_latencies_seconds": false}
	for _, f := range families {
		if _, ok := want[f.GetName()]; !ok {
			continue
		}
		want[f.GetName()] = true
		if f.GetName() == "go_sched_latencies_seconds" {
			if h := f.GetMetric()[0].GetHistogram(); h == nil || len(h.GetBucket()) < 3 {
				t.Errorf("go_sched_latencies_seconds is not a histogram with buckets: %v", f)
			}
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("%s is not gathered", name)
		}
	}
}
