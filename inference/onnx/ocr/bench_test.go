package ocr

import (
	"bufio"
	"context"
	"fmt"
	"image"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

// meterScene is the benchmark's meter: three rows of a water meter.
var meterScene = scene{font: "DejaVuSans.ttf", size: 28, lines: []string{"METER 0017283", "TOTAL 3841.26 m3", "FLOW 12.5 L/min"}, fg: black, bg: white, noise: 6, seed: 5}

// benchImages are the encoded images the benchmarks read.
func benchImages(b *testing.B) map[string][]byte {
	page, err := os.ReadFile(pagePath(b))
	if err != nil {
		b.Fatal(err)
	}
	return map[string][]byte{
		"meter": encodePNG(b, render(b, meterScene)),
		"page":  page,
	}
}

// BenchmarkInfer is one warm request, input decoding included, for the
// rendered meter (290×200 px, 3 lines) and the scanned page (384×191 px,
// 7 lines).
func BenchmarkInfer(b *testing.B) {
	m := model(b)
	for _, name := range []string{"meter", "page"} {
		in := inputFor(benchImages(b)[name])
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			if _, err := m.Infer(ctx, inference.Request{Input: in}); err != nil {
				b.Fatal(err)
			}
			timed(b, func() error {
				_, err := m.Infer(ctx, inference.Request{Input: in})
				return err
			})
		})
	}
}

// BenchmarkStages times detection (pre-processing, model, boxes) and
// recognition (crops, model, CTC decoding) apart, on decoded images.
func BenchmarkStages(b *testing.B) {
	m := model(b)
	ctx := context.Background()
	for _, name := range []string{"meter", "page"} {
		img, err := decodeImage(benchImages(b)[name], DefaultMaxPixels)
		if err != nil {
			b.Fatal(err)
		}
		qs, err := m.detect(ctx, img)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/det", func(b *testing.B) {
			timed(b, func() error {
				_, err := m.detect(ctx, img)
				return err
			})
		})
		b.Run(name+"/rec", func(b *testing.B) {
			timed(b, func() error {
				_, err := m.recognize(ctx, img, qs)
				return err
			})
			b.ReportMetric(float64(len(qs)), "lines")
		})
	}
}

// BenchmarkRecBatch compares how lines are batched for the recogniser
// (Config.RecBatchWidth): one at a time, the default budget, all in one
// run; on the page's 7 long lines and on 8 short meter lines.
func BenchmarkRecBatch(b *testing.B) {
	m := model(b)
	defer func(w int) { m.cfg.RecBatchWidth = w }(m.cfg.RecBatchWidth)
	short := scene{font: "DejaVuSansMono.ttf", size: 24, fg: black, bg: white,
		lines: []string{"L1 230.4V", "L2 229.8V", "L3 231.1V", "12:45", "PF 0.98", "50.0 Hz", "kWh 4521", "kvar 12"}}
	ctx := context.Background()
	for _, name := range []string{"page", "meter8"} {
		var img *image.RGBA
		if name == "meter8" {
			img = render(b, short)
		} else {
			var err error
			if img, err = decodeImage(benchImages(b)["page"], DefaultMaxPixels); err != nil {
				b.Fatal(err)
			}
		}
		qs, err := m.detect(ctx, img)
		if err != nil {
			b.Fatal(err)
		}
		for _, budget := range []int{1, DefaultRecBatchWidth, -1} {
			b.Run(fmt.Sprintf("%s/width=%d", name, budget), func(b *testing.B) {
				m.cfg.RecBatchWidth = budget
				timed(b, func() error {
					_, err := m.recognize(ctx, img, qs)
					return err
				})
				b.ReportMetric(float64(len(qs)), "lines")
			})
		}
	}
}

// BenchmarkPreprocess is the pure-Go work on a 4-megapixel photo-like
// image before the detector runs: decoding the JPEG, converting it, and
// scaling it to the detector's input.
func BenchmarkPreprocess(b *testing.B) {
	img := image.NewRGBA(image.Rect(0, 0, 2304, 1728)) // 3.98 MP
	for i := range img.Pix {
		img.Pix[i] = uint8(i*7 + i/4096)
	}
	j := encodeJPEG(b, img, 85)
	b.Run("decode", func(b *testing.B) {
		timed(b, func() error {
			_, err := decodeImage(j, DefaultMaxPixels)
			return err
		})
	})
	b.Run("detInput", func(b *testing.B) {
		timed(b, func() error {
			detInput(img, DefaultDetMaxSide)
			return nil
		})
	})
}

// BenchmarkInferParallel is throughput at saturation: meter requests from
// GOMAXPROCS goroutines on one model (1 intra-op thread per session).
func BenchmarkInferParallel(b *testing.B) {
	m := model(b)
	in := inputFor(benchImages(b)["meter"])
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Infer(context.Background(), inference.Request{Input: in}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkModelMemory reports what one loaded, warmed-up model costs:
// the process's resident memory growth (mostly ONNX Runtime's, outside the
// Go heap) and the Go heap growth, in MB.
func BenchmarkModelMemory(b *testing.B) {
	if initErr != nil {
		missing(b, initErr)
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		rss0 := rssBytes(b)
		m, err := New(Config{Dir: modelsDir()})
		if err != nil {
			b.Fatal(err)
		}
		rss1 := rssBytes(b)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(rss1-rss0)/1e6, "RSS-MB")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/1e6, "heap-MB")
		m.Close()
	}
}

// cpuTime is the CPU time the process has used, user and system: on a
// busy machine it measures the work of a benchmark better than the wall
// clock (ONNX Runtime runs on the calling thread with 1 intra-op thread).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timed runs f b.N times (b.Loop) and reports wall and CPU milliseconds per op.
func timed(b *testing.B, f func() error) {
	b.Helper()
	c0 := cpuTime()
	for b.Loop() {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/op")
	b.ReportMetric(float64((cpuTime()-c0).Microseconds())/1e3/float64(b.N), "cpu-ms/op")
}

// rssBytes is the process's resident set size from /proc/self/status.
func rssBytes(tb testing.TB) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Skip("no /proc/self/status:", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Skip("no VmRSS in /proc/self/status")
	return 0
}
