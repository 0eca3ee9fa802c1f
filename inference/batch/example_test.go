package batch_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference/batch"
)

// A batcher in front of a function that handles many inputs in one call,
// as a model does with a batch tensor.
func ExampleNew() {
	upper := batch.New(batch.Options{MaxBatch: 8, MaxDelay: 2 * time.Millisecond},
		func(ctx context.Context, in []string) ([]string, error) {
			out := make([]string, len(in))
			for i, s := range in {
				out[i] = strings.ToUpper(s)
			}
			return out, nil
		})
	defer upper.Close()

	words := []string{"one", "two", "three"}
	got := make([]string, len(words))
	var wg sync.WaitGroup
	for i, w := range words {
		wg.Go(func() { got[i], _ = upper.Do(context.Background(), w) })
	}
	wg.Wait()
	fmt.Println(got)
	// Output: [ONE TWO THREE]
}
