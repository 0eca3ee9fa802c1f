package ocr

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"runtime"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// fuzzMaxPixels is the pixel limit of the fuzz targets: small, so that an
// allocation out of proportion to it shows.
const fuzzMaxPixels = 64 * 64

// decodeBudget is the most heap decodeImage may allocate for data of n
// bytes under a limit of p pixels: the decoders' working images (at most 8
// bytes a pixel for 16-bit PNG, 12 for progressive JPEG coefficients), the
// RGBA copy, buffers proportional to the input, and a fixed 2 MiB for
// tables and readers.
func decodeBudget(n, p int) uint64 {
	return uint64(32*p + 4*n + 2<<20)
}

func decodeSeeds() [][]byte {
	var jp bytes.Buffer
	_ = jpeg.Encode(&jp, small(), &jpeg.Options{Quality: 75})
	gray := image.NewGray(image.Rect(0, 0, 16, 16))
	pal := image.NewPaletted(image.Rect(0, 0, 8, 8), color.Palette{color.Black, color.White})
	deep := image.NewNRGBA64(image.Rect(0, 0, 8, 8))
	p := pngOf(small())
	return [][]byte{
		p, jp.Bytes(), pngOf(gray), pngOf(pal), pngOf(deep),
		p[:len(p)/2], jp.Bytes()[:len(jp.Bytes())/2],
		pngHeader(100000, 100000), pngHeader(0, 0), pngHeader(64, 65),
		[]byte("GIF89a"), {}, {0xff, 0xd8, 0xff},
	}
}

// FuzzDecode feeds arbitrary bytes to the image decoder: it must never
// panic, must fail only with InvalidInput, must return an image within the
// pixel limit, and must not allocate beyond what the limit allows.
func FuzzDecode(f *testing.F) {
	for _, s := range decodeSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		img, err := decodeImage(data, fuzzMaxPixels)
		runtime.ReadMemStats(&after)
		if d, budget := after.TotalAlloc-before.TotalAlloc, decodeBudget(len(data), fuzzMaxPixels); d > budget {
			t.Fatalf("decoding %d bytes allocated %d bytes, the budget is %d", len(data), d, budget)
		}
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("error is not InvalidInput: %v", err)
			}
			return
		}
		r := img.Bounds()
		if r.Min != (image.Point{}) || r.Dx() <= 0 || r.Dy() <= 0 || r.Dx()*r.Dy() > fuzzMaxPixels {
			t.Fatalf("decoded bounds %v", r)
		}
		for i := 3; i < len(img.Pix); i += 4 {
			if img.Pix[i] != 0xff {
				t.Fatalf("pixel %d not opaque", i/4)
			}
		}
	})
}

// FuzzInput feeds arbitrary input JSON through the input decoder and the
// image decoder: never a panic, only InvalidInput errors.
func FuzzInput(f *testing.F) {
	for _, s := range decodeSeeds() {
		f.Add([]byte(inputFor(s)))
	}
	for _, s := range []string{``, `null`, `{}`, `{"image":1}`, `{"image":"data:image/png;base64,"}`, `{"image":"AAAA","x":1}`, `{"image":"AA-_"}`, `{"image":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := decodeInput(json.RawMessage(raw))
		if err == nil {
			_, err = decodeImage(b, fuzzMaxPixels)
		}
		if err != nil && !inference.IsInvalidInput(err) {
			t.Fatalf("error is not InvalidInput: %v", err)
		}
	})
}
