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
	"testing"

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
			for b.Loop() {
				if _, err := m.Infer(ctx, inference.Request{Input: in}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/op")
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
			for b.Loop() {
				if _, err := m.detect(ctx, img); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/op")
		})
		b.Run(name+"/rec", func(b *testing.B) {
			for b.Loop() {
				if _, err := m.recognize(ctx, img, qs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/op")
			b.ReportMetric(float64(len(qs)), "lines")
		})
	}
}

// BenchmarkRecBatch compares how the page's 7 lines are batched for the
// recogniser: one at a time, 4 a run (grouped by width), all in one run.
func BenchmarkRecBatch(b *testing.B) {
	if initErr != nil {
		missing(b, initErr)
	}
	img, err := decodeImage(benchImages(b)["page"], DefaultMaxPixels)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, batch := range []int{1, 4, -1} {
		m, err := New(Config{Dir: modelsDir(), RecBatch: batch})
		if err != nil {
			b.Fatal(err)
		}
		qs, err := m.detect(ctx, img)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint("batch=", batch), func(b *testing.B) {
			for b.Loop() {
				if _, err := m.recognize(ctx, img, qs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/op")
		})
		m.Close()
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
		for b.Loop() {
			if _, err := decodeImage(j, DefaultMaxPixels); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("detInput", func(b *testing.B) {
		for b.Loop() {
			detInput(img, DefaultDetMaxSide)
		}
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
