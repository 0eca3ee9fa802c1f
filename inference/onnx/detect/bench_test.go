package detect

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

var benchPhotos = []string{"dog.jpg", "person.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg"}

func benchInputs(b *testing.B) []inference.Request {
	reqs := make([]inference.Request, len(benchPhotos))
	for i, f := range benchPhotos {
		reqs[i] = inference.Request{Device: "cam", Input: imageInput(photo(b, f))}
	}
	return reqs
}

// BenchmarkLatency is one request at a time (dog.jpg, 768x576), warm:
// decoding, letterbox, network and decoding of the outputs. With batching
// on, a lone request also waits MaxDelay for company.
func BenchmarkLatency(b *testing.B) {
	req := inference.Request{Input: imageInput(photo(b, "dog.jpg"))}
	for _, mb := range []int{1, 8} {
		b.Run(fmt.Sprint("maxbatch", mb), func(b *testing.B) {
			m := newModel(b, Config{MaxBatch: mb})
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Infer(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPreprocess is the part of a request that runs in the caller's
// goroutine before the network: base64, JPEG decoding and the letterbox.
func BenchmarkPreprocess(b *testing.B) {
	m := newModel(b, Config{MaxBatch: 1})
	for _, f := range []string{"dog.jpg", "kite.jpg"} {
		req := inference.Request{Input: imageInput(photo(b, f))}
		b.Run(strings.TrimSuffix(f, ".jpg"), func(b *testing.B) {
			for b.Loop() {
				_, _, tp, err := m.prepare(context.Background(), req, m.cfg.MaxPixels)
				if err != nil {
					b.Fatal(err)
				}
				m.tensors.Put(tp)
			}
		})
	}
}

// BenchmarkThroughput saturates the model with 8 callers per CPU, batching
// off (MaxBatch 1) and on (MaxBatch 8), for several worker and thread
// settings; each "on" result reports its speed-up over the "off" one just
// before it. The photos rotate through the five darknet samples.
func BenchmarkThroughput(b *testing.B) {
	reqs := benchInputs(b)
	type setting struct{ workers, threads int }
	settings := []setting{{1, 1}, {2, 1}, {1, 2}}
	if s := os.Getenv("DETECT_BENCH_SETTINGS"); s != "" { // e.g. "2x1,1x2": workers x threads
		settings = nil
		for _, f := range strings.Split(s, ",") {
			w, t, _ := strings.Cut(f, "x")
			wi, _ := strconv.Atoi(w)
			ti, _ := strconv.Atoi(t)
			settings = append(settings, setting{wi, ti})
		}
	}
	for _, s := range settings {
		var off float64
		for _, mb := range []int{1, 8} {
			name := fmt.Sprintf("workers%d/threads%d/maxbatch%d", s.workers, s.threads, mb)
			b.Run(name, func(b *testing.B) {
				m := newModel(b, Config{MaxBatch: mb, Workers: s.workers, Threads: s.threads})
				var next atomic.Int64
				b.SetParallelism(8)
				start := time.Now()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						req := reqs[int(next.Add(1))%len(reqs)]
						if _, err := m.Infer(context.Background(), req); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				rate := float64(b.N) / time.Since(start).Seconds()
				b.ReportMetric(rate, "img/s")
				st := m.BatchStats()
				b.ReportMetric(float64(st.Items)/float64(max(st.Batches, 1)), "img/run")
				if mb == 1 {
					off = rate
				} else if off > 0 {
					b.ReportMetric(rate/off, "x-vs-maxbatch1")
				}
			})
		}
	}
}

// BenchmarkMemory loads the model (warmed up at batch sizes 1 and 8) and
// reports what one loaded model costs: resident memory and Go heap.
func BenchmarkMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		rss0, heap0 := rss(b), heapAlloc()
		m := newModel(b, Config{})
		runtime.GC()
		b.ReportMetric(float64(rss(b)-rss0)/(1<<20), "rss-MB/model")
		b.ReportMetric(float64(heapAlloc()-heap0)/(1<<20), "heap-MB/model")
		m.Close()
	}
}

// rss is the resident set size of this process, in bytes.
func rss(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		tb.Skip("no /proc/self/statm:", err)
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func heapAlloc() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
