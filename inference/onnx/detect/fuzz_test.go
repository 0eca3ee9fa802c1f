package detect

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"math"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// fuzzMaxPixels keeps each fuzz input cheap to decode.
const fuzzMaxPixels = 1 << 16

// imageSeeds are small real images in the shapes a decoder meets: JPEG,
// PNG gray / paletted / 16-bit / with alpha, and cut-off copies.
func imageSeeds(tb testing.TB) [][]byte {
	img := testImage(40, 30)
	gray := image.NewGray16(image.Rect(0, 0, 7, 9))
	pal := image.NewPaletted(image.Rect(0, 0, 5, 5), color.Palette{color.Black, color.White})
	nrgba := image.NewNRGBA(image.Rect(0, 0, 6, 4))
	for i := range nrgba.Pix {
		nrgba.Pix[i] = uint8(i * 37)
		gray.Pix[i%len(gray.Pix)] = uint8(i * 11)
	}
	var seeds [][]byte
	for _, b := range [][]byte{encodeJPEG(tb, img), encodePNG(tb, img), encodePNG(tb, gray), encodePNG(tb, pal), encodePNG(tb, nrgba)} {
		seeds = append(seeds, b, b[:len(b)/2])
	}
	var buf bytes.Buffer
	png.Encode(&buf, image.NewRGBA(image.Rect(0, 0, 1, 1)))
	return append(seeds, buf.Bytes(), hugePNG(1<<20, 1<<20), hugePNG(3, 3), []byte("GIF89a"), nil)
}

// checkTensor runs the letterbox on a decoded image and checks the tensor.
func checkTensor(t *testing.T, img image.Image) {
	dst := make([]float32, tensorLen)
	lb := preprocess(img, dst, image.NewRGBA(image.Rect(0, 0, InputSize, InputSize)))
	if lb.sw < 1 || lb.sh < 1 || lb.x0+lb.sw > InputSize || lb.y0+lb.sh > InputSize {
		t.Fatalf("letterbox %+v", lb)
	}
	for i, v := range dst {
		if math.IsNaN(float64(v)) || v < -3 || v > 3 {
			t.Fatalf("tensor[%d] = %v", i, v)
		}
	}
}

// FuzzImage feeds arbitrary bytes to the image decoder and the letterbox:
// never a panic, only InvalidInput errors, and a decoded image within the
// pixel limit gives a finite tensor.
func FuzzImage(f *testing.F) {
	for _, s := range imageSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := decodeImage(data, fuzzMaxPixels)
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("error is not InvalidInput: %v", err)
			}
			return
		}
		if b := img.Bounds(); b.Dx()*b.Dy() > fuzzMaxPixels || b.Dx() < 1 || b.Dy() < 1 {
			t.Fatalf("decoded %v past the limit", b)
		}
		checkTensor(t, img)
	})
}

// FuzzInput feeds arbitrary input and params JSON through the decoding
// path of Infer (params, input, base64, image, letterbox).
func FuzzInput(f *testing.F) {
	for _, s := range imageSeeds(f) {
		f.Add([]byte(`{"image":"`+base64.StdEncoding.EncodeToString(s)+`"}`), []byte(`{"score_threshold":0.5}`))
	}
	for _, s := range [][2]string{
		{`{"image":"data:image/png;base64,iVBORw0KGgo="}`, `{"max_detections":3,"iou_threshold":0.2}`},
		{`{"image":"\u0041\u0042=="}`, `null`},
		{`{"image":["x"]}`, `{"max_detections":1e400}`},
		{`[]`, `[]`},
		{`{"image":"x","image":"y"}`, `{"score_threshold":-0}`},
	} {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, input, params []byte) {
		p, err := decodeParams(params)
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("params error is not InvalidInput: %v", err)
			}
		} else if p.ScoreThreshold < MinScoreThreshold || p.ScoreThreshold > 1 || p.MaxDetections < 1 || p.MaxDetections > MaxMaxDetections || !(p.IoUThreshold > 0 && p.IoUThreshold <= 1) {
			t.Fatalf("params out of range: %+v", p)
		}
		data, err := decodeInput(input)
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("input error is not InvalidInput: %v", err)
			}
			return
		}
		img, err := decodeImage(data, fuzzMaxPixels)
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("image error is not InvalidInput: %v", err)
			}
			return
		}
		checkTensor(t, img)
	})
}

// FuzzPostprocess fills a few cells of the network's outputs with
// arbitrary floats (NaN and infinities included) and checks that the
// detections are sane and encode as JSON.
func FuzzPostprocess(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0x3f, 0, 0, 0x80, 0x7f}, uint16(640), uint16(480))
	f.Add([]byte{0, 0, 0xc0, 0x7f, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, uint16(1), uint16(4000))
	f.Fuzz(func(t *testing.T, vals []byte, w, h uint16) {
		if w == 0 || h == 0 {
			return
		}
		r := emptyRaw()
		// Spread the values over a few cells of every level.
		for i := 0; i+4 <= len(vals) && i < 4096; i += 4 {
			v := math.Float32frombits(binary.LittleEndian.Uint32(vals[i:]))
			l := (i / 4) % 3
			k := (i * 7919) % len(r.scores[l])
			r.scores[l][k] = v
			r.dist[l][(i*104729)%len(r.dist[l])] = v
			if v >= 0 && v <= 1 { // a valid score: give it a chance to be a detection
				r.scores[l][(k/NumClasses)*NumClasses] = v
			}
		}
		lb := newLetterbox(int(w), int(h))
		p := DefaultParams
		p.ScoreThreshold = MinScoreThreshold
		dets := postprocess(r, p, &lb)
		if _, err := json.Marshal(Output{Detections: dets, Width: int(w), Height: int(h)}); err != nil {
			t.Fatalf("output does not encode: %v", err)
		}
		for _, d := range dets {
			b := d.Box
			if !(0 <= b.X1 && b.X1 < b.X2 && b.X2 <= float64(w) && 0 <= b.Y1 && b.Y1 < b.Y2 && b.Y2 <= float64(h)) {
				t.Fatalf("box %+v outside %dx%d", b, w, h)
			}
		}
	})
}
