package detect

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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
// off (MaxBatch 1) and on (MaxBatch 4 and 8), for several worker and
// thread settings; each "on" result reports its speed-up over the "off"
// one of the same setting, measured just before. The photos rotate
// through the five darknet samples. DETECT_BENCH_SETTINGS picks the
// settings as workers x threads, e.g. "2x1,1x2".
func BenchmarkThroughput(b *testing.B) {
	reqs := benchInputs(b)
	type setting struct{ workers, threads int }
	settings := []setting{{1, 1}, {2, 1}, {1, 2}}
	if s := os.Getenv("DETECT_BENCH_SETTINGS"); s != "" {
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
		for _, mb := range []int{1, 4, 8} {
			name := fmt.Sprintf("workers%d/threads%d/maxbatch%d", s.workers, s.threads, mb)
			b.Run(name, func(b *testing.B) {
				m := newModel(b, Config{MaxBatch: mb, Workers: s.workers, Threads: s.threads})
				var next atomic.Int64
				b.SetParallelism(8)
				start, cpu0 := time.Now(), cpuTime()
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
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/img")
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

// BenchmarkRun is the network alone, one goroutine, on batches of 1 to 8
// images: wall and CPU milliseconds per image show what batching itself
// saves (or costs) on this machine.
func BenchmarkRun(b *testing.B) {
	for _, threads := range []int{1, 2} {
		m := newModel(b, Config{MaxBatch: 8, Threads: threads})
		for _, n := range []int{1, 2, 4, 8} {
			ins := make([][]float32, n)
			for i := range ins {
				ins[i] = make([]float32, tensorLen)
				for k := range ins[i] {
					ins[i][k] = float32(k%17-8) / 4
				}
			}
			b.Run(fmt.Sprintf("threads%d/batch%d", threads, n), func(b *testing.B) {
				cpu0 := cpuTime()
				for b.Loop() {
					if _, err := m.run(context.Background(), ins); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N*n), "ms/img")
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N*n), "cpu-ms/img")
			})
		}
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMemory loads the model (warmed up at batch sizes 1 and
// MaxBatch) and reports what one loaded model costs: resident memory and
// Go heap. ONNX Runtime keeps buffers sized for the largest batch it ran.
func BenchmarkMemory(b *testing.B) {
	for _, mb := range []int{1, 8} {
		b.Run(fmt.Sprint("maxbatch", mb), func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				rss0, heap0 := rss(b), heapAlloc()
				m := newModel(b, Config{MaxBatch: mb})
				runtime.GC()
				b.ReportMetric(float64(rss(b)-rss0)/(1<<20), "rss-MB/model")
				b.ReportMetric(float64(heapAlloc()-heap0)/(1<<20), "heap-MB/model")
				m.Close()
			}
		})
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
