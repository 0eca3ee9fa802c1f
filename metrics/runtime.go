package metrics

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Runtime returns the collectors of the process and its Go runtime that
// every node registers: the default Go and process metrics, and
// go_sched_latencies_seconds, how long goroutines waited to run once
// ready. On a node whose cores are full that wait, not the broker or the
// model, is what sets the tail of the request latency.
func Runtime() []prometheus.Collector {
	return []prometheus.Collector{
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{
			Matcher: regexp.MustCompile(`^/sched/latencies:seconds$`),
		})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
}
