package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
)

// BenchmarkRoundTrip drives the embedded service with the device simulator
// at QoS 1 (each device its own connection) and reports round trips/s and
// latency percentiles. b.N is ignored beyond one run per sub-benchmark: the
// unit of work is a fixed-length load run.
func BenchmarkRoundTrip(b *testing.B) {
	for _, devices := range []int{10, 100} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			cfg := testConfig(b)
			cfg.Throttle.Rate = 1e6
			cfg.Throttle.Burst = 1e6
			cfg.Throttle.MaxInFlight = 1e6
			cfg.HTTP.Addr = ""
			svc := startService(b, cfg)
			b.ResetTimer()
			rep, err := devicesim.Run(context.Background(), devicesim.Options{
				Broker:   "tcp://" + svc.MQTTAddr(),
				Devices:  devices,
				Rate:     20000 / float64(devices),
				QoS:      1,
				Duration: 3 * time.Second,
				Seed:     1,
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rep.RoundTripsPerSec, "roundtrips/s")
			b.ReportMetric(float64(rep.Latency.P50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(rep.Latency.P99.Microseconds()), "p99-µs")
			b.ReportMetric(float64(rep.Lost), "lost")
		})
	}
}
