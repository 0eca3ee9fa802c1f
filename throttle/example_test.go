package throttle_test

import (
	"fmt"
	"time"

	"github.com/mqttinfer/mqttinfer/throttle"
)

func Example() {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l, err := throttle.New(throttle.Config{
		Default: throttle.Limits{Rate: 5, Burst: 10, MaxInFlight: 4},
		Costs:   map[string]int{"chat": 4},
		Now:     func() time.Time { return now }, // a frozen clock, for the example
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 3 {
		d := l.Allow("d1", "chat")
		if !d.Allowed {
			fmt.Printf("429 %s; retry after %d ms\n", d.Describe("d1"), d.RetryAfterMillis())
			continue
		}
		fmt.Printf("ok: limit %d, remaining %d, reset %d ms\n", d.Limits.Burst, d.Remaining, d.ResetMillis())
		l.Done("d1") // once the result is sent
	}
	// Output:
	// ok: limit 10, remaining 6, reset 800 ms
	// ok: limit 10, remaining 2, reset 1600 ms
	// 429 device d1 is over 5 tokens/s (burst 10): this request costs 4 tokens, the bucket holds 2; retry after 400 ms
}
