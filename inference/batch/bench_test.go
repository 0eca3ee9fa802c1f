package batch

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkDo measures the batcher's own cost per request around a run
// function that does nothing, with batching off (MaxBatch 1) and on.
func BenchmarkDo(b *testing.B) {
	for _, mb := range []int{1, 8} {
		b.Run(fmt.Sprint("maxbatch", mb), func(b *testing.B) {
			bt := New(Options{MaxBatch: mb, MaxDelay: 50 * time.Microsecond}, func(ctx context.Context, in []int) ([]int, error) {
				return in, nil
			})
			defer bt.Close()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bt.Do(context.Background(), 1); err != nil {
						b.Error(err)
						return
					}
				}
			})
			s := bt.Stats()
			b.ReportMetric(float64(s.Items)/float64(max(s.Batches, 1)), "items/batch")
		})
	}
}
