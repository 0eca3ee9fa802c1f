package detect

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// testImage is a w×h image: a red square on a blue background.
func testImage(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.RGBA{0, 0, 200, 255}
			if x > w/4 && x < 3*w/4 && y > h/4 && y < 3*h/4 {
				c = color.RGBA{220, 0, 0, 255}
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

func encodePNG(tb testing.TB, img image.Image) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(tb testing.TB, img image.Image) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// hugePNG is a valid PNG header (signature and IHDR with a correct CRC)
// claiming w×h pixels, followed by no pixel data at all.
func hugePNG(w, h uint32) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 4+4+13)
	binary.BigEndian.PutUint32(ihdr, 13)
	copy(ihdr[4:], "IHDR")
	binary.BigEndian.PutUint32(ihdr[8:], w)
	binary.BigEndian.PutUint32(ihdr[12:], h)
	ihdr[16], ihdr[17] = 8, 2 // 8-bit RGB
	b = append(b, ihdr...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(ihdr[4:]))
}

func TestDecodeInput(t *testing.T) {
	png := encodePNG(t, testImage(8, 8))
	b64 := base64.StdEncoding.EncodeToString(png)
	for _, tc := range []struct {
		raw  string
		want []byte
		err  string
	}{
		{`{"image":"` + b64 + `"}`, png, ""},
		{` {"image" : "` + strings.TrimRight(b64, "=") + `"} `, png, ""},
		{`{"image":"data:image/png;base64,` + b64 + `"}`, png, ""},
		{``, nil, "input is required"},
		{`null`, nil, "input is required"},
		{`[1]`, nil, "input must be a JSON object"},
		{`{"image":1}`, nil, "input.image must be a base64 string, got a number"},
		{`{"image":null}`, nil, "input.image must be a base64 string, got null"},
		{`{}`, nil, "input.image is required"},
		{`{"image":"` + b64 + `","extra":1}`, nil, `unknown field "extra"`},
		{`{"image":""}`, nil, "input.image is empty"},
		{`{"image":"***"}`, nil, "not valid base64"},
		{`{"image":"data:image/png,abc"}`, nil, "data URL without"},
		{`{"image":"abc`, nil, "input is not valid JSON"},
	} {
		got, err := decodeInput(json.RawMessage(tc.raw))
		if tc.err == "" {
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Errorf("%.50s: %v", tc.raw, err)
			}
			continue
		}
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%.50s: error %v, want InvalidInput with %q", tc.raw, err, tc.err)
		}
	}
}

func TestDecodeParams(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want Params
		err  string
	}{
		{``, DefaultParams, ""},
		{`null`, DefaultParams, ""},
		{`{}`, DefaultParams, ""},
		{`{"score_threshold":0.5,"max_detections":7,"iou_threshold":0.3}`, Params{0.5, 7, 0.3}, ""},
		{`{"score_threshold":1,"max_detections":300,"iou_threshold":1}`, Params{1, 300, 1}, ""},
		{`{"max_detections":2e1}`, Params{0.35, 20, 0.6}, ""},
		{`{"score_threshold":0.01}`, Params{}, "params.score_threshold must be in [0.05, 1]"},
		{`{"score_threshold":1.5}`, Params{}, "params.score_threshold"},
		{`{"score_threshold":"0.5"}`, Params{}, "params.score_threshold must be a number, got a string"},
		{`{"max_detections":0}`, Params{}, "params.max_detections must be a whole number from 1 to 300"},
		{`{"max_detections":301}`, Params{}, "params.max_detections"},
		{`{"max_detections":2.5}`, Params{}, "params.max_detections"},
		{`{"iou_threshold":0}`, Params{}, "params.iou_threshold must be in (0, 1]"},
		{`{"iou_threshold":1e999}`, Params{}, "params.iou_threshold must be a finite number"},
		{`{"nms":0.5}`, Params{}, `params: unknown field "nms"`},
		{`[]`, Params{}, "params must be a JSON object"},
	} {
		got, err := decodeParams(json.RawMessage(tc.raw))
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("%s: %+v, %v", tc.raw, got, err)
			}
			continue
		}
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want InvalidInput with %q", tc.raw, err, tc.err)
		}
	}
}

func TestDecodeImage(t *testing.T) {
	img := testImage(64, 48)
	jpg, pngb := encodeJPEG(t, img), encodePNG(t, img)
	var gifb bytes.Buffer
	if err := gif.Encode(&gifb, img, nil); err != nil {
		t.Fatal(err)
	}
	for _, data := range [][]byte{jpg, pngb} {
		got, err := decodeImage(data, 64*48)
		if err != nil || got.Bounds().Dx() != 64 || got.Bounds().Dy() != 48 {
			t.Errorf("decode: %v", err)
		}
	}
	for _, tc := range []struct {
		name string
		data []byte
		max  int
		err  string
	}{
		{"one pixel over", pngb, 64*48 - 1, "64x48 = 3072 pixels, the limit is 3071"},
		// The header alone decides: this PNG has no pixel data at all.
		{"huge header", hugePNG(100000, 100000), DefaultMaxPixels, "100000x100000 = 10000000000 pixels, the limit is"},
		{"zero size", hugePNG(0, 5), DefaultMaxPixels, "input.image"},
		{"gif", gifb.Bytes(), DefaultMaxPixels, "is a gif image; only JPEG and PNG"},
		{"text", []byte("hello, world"), DefaultMaxPixels, "not a JPEG or PNG image"},
		{"truncated jpeg", jpg[:len(jpg)*3/4], DefaultMaxPixels, "truncated or corrupt JPEG"},
		{"truncated png", pngb[:len(pngb)-20], DefaultMaxPixels, "truncated or corrupt PNG"},
		{"header only", hugePNG(10, 10), DefaultMaxPixels, "truncated or corrupt PNG"},
	} {
		_, err := decodeImage(tc.data, tc.max)
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want InvalidInput with %q", tc.name, err, tc.err)
		}
	}
}

func TestLetterbox(t *testing.T) {
	for _, tc := range []struct {
		w, h, sw, sh, x0, y0 int
	}{
		{768, 576, 416, 312, 0, 52},
		{500, 500, 416, 416, 0, 0},
		{352, 448, 327, 416, 44, 0},
		{100, 50, 416, 208, 0, 104},  // scaled up
		{5000, 1, 416, 1, 0, 207},    // one row
		{1, 5000, 1, 416, 207, 0},    // one column
		{416, 416, 416, 416, 0, 0},   // as is
		{2000, 2000, 416, 416, 0, 0}, // at the pixel limit
	} {
		lb := newLetterbox(tc.w, tc.h)
		if lb.sw != tc.sw || lb.sh != tc.sh || lb.x0 != tc.x0 || lb.y0 != tc.y0 {
			t.Errorf("%dx%d: %+v", tc.w, tc.h, lb)
		}
		// The content's corners map to the image's corners.
		if x := lb.toImageX(float32(lb.x0)); x != 0 {
			t.Errorf("%dx%d: left edge -> %v", tc.w, tc.h, x)
		}
		if x := lb.toImageX(float32(lb.x0 + lb.sw)); abs(x-float64(tc.w)) > 1e-9*float64(tc.w) {
			t.Errorf("%dx%d: right edge -> %v", tc.w, tc.h, x)
		}
		if y := lb.toImageY(InputSize); y != float64(tc.h) {
			t.Errorf("%dx%d: bottom margin -> %v, want clamped to %d", tc.w, tc.h, y, tc.h)
		}
	}
}

// TestPreprocess letterboxes a landscape image and checks the tensor: BGR
// planes normalised with NanoDet's mean and std, black margins.
func TestPreprocess(t *testing.T) {
	img := testImage(832, 416) // scales by 1/2 to 416x208, centred at y 104
	dst := make([]float32, tensorLen)
	lb := preprocess(img, dst, image.NewRGBA(image.Rect(0, 0, InputSize, InputSize)))
	if lb.x0 != 0 || lb.y0 != 104 || lb.sw != 416 || lb.sh != 208 {
		t.Fatalf("letterbox %+v", lb)
	}
	at := func(c, x, y int) float32 { return dst[c*planeLen+y*InputSize+x] }
	near := func(got, want float32) bool { return got-want < 0.05 && want-got < 0.05 }
	norm := func(v float32, c int) float32 { return (v - mean[c]) / std[c] }
	// The square is at x 104..312, y 156..260 of the input.
	for _, p := range []struct {
		x, y    int
		b, g, r float32
	}{
		{0, 0, 0, 0, 0},       // top margin: black
		{208, 103, 0, 0, 0},   // last margin row above the content
		{208, 312, 0, 0, 0},   // first margin row below
		{415, 415, 0, 0, 0},   // bottom margin
		{208, 105, 200, 0, 0}, // blue background, first content rows
		{208, 310, 200, 0, 0}, // last content rows
		{0, 208, 200, 0, 0},   // left edge
		{415, 208, 200, 0, 0}, // right edge
		{50, 208, 200, 0, 0},  // left of the square
		{208, 208, 0, 0, 220}, // red square, centre
		{120, 170, 0, 0, 220}, // near its top left corner
		{300, 250, 0, 0, 220}, // near its bottom right corner
	} {
		got := [3]float32{at(0, p.x, p.y), at(1, p.x, p.y), at(2, p.x, p.y)}
		want := [3]float32{norm(p.b, 0), norm(p.g, 1), norm(p.r, 2)}
		for c := range 3 {
			if !near(got[c], want[c]) {
				t.Errorf("pixel (%d,%d) plane %d = %v, want %v", p.x, p.y, c, got[c], want[c])
			}
		}
	}
}
