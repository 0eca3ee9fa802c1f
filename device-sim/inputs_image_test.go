package devicesim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	_ "image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// decodeImageInput decodes an image input as a model would: JSON, standard
// base64, then image.Decode. It fails when the input is over the default
// input size.
func decodeImageInput(raw []byte) (decodedImage, error) {
	if len(raw) > DefaultMaxInputSize {
		return decodedImage{}, fmt.Errorf("input is %d bytes, over %d", len(raw), DefaultMaxInputSize)
	}
	var in ImageInput
	if err := json.Unmarshal(raw, &in); err != nil {
		return decodedImage{}, err
	}
	b, err := base64.StdEncoding.Strict().DecodeString(in.Image)
	if err != nil {
		return decodedImage{}, fmt.Errorf("image is not standard base64: %w", err)
	}
	img, format, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		return decodedImage{}, fmt.Errorf("image does not decode: %w", err)
	}
	return decodedImage{img: img, format: format, size: len(raw), b64: in.Image}, nil
}

type decodedImage struct {
	img    image.Image
	format string
	size   int // bytes of input JSON
	b64    string
}

// lumaRange is the darkest and the brightest luma of img.
func lumaRange(img image.Image) (lo, hi uint8) {
	lo = 255
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			l := color.GrayModel.Convert(img.At(x, y)).(color.Gray).Y
			lo, hi = min(lo, l), max(hi, l)
		}
	}
	return lo, hi
}

func TestOCRInput(t *testing.T) {
	for _, variant := range []string{"default", "synthetic", "missing"} {
		t.Run(variant, func(t *testing.T) {
			f, src := prepareShared(t, "ocr", variant)
			if variant != "default" && !strings.Contains(src.Description, "the Go fonts") {
				t.Errorf("source %q, want the Go fonts", src.Description)
			}
			if _, err := os.Stat(filepath.Join(defaultFontDir, "DejaVuSans.ttf")); err == nil && variant == "default" && !strings.Contains(src.Description, "DejaVu Sans") {
				t.Errorf("source %q, want DejaVu Sans", src.Description)
			}
			formats := map[string]int{}
			var light, dark, maxSize int
			devices := unlessRace(24, 16)
			if variant != "default" {
				devices = 4 // the fonts differ, nothing else
			}
			for dev := range devices {
				gen := f("d", rand.New(rand.NewPCG(4, uint64(dev))))
				var first image.Point
				var frames []string
				for i, raw := range inputJSON(t, gen, unlessRace(6, 3)) {
					d, err := decodeImageInput(raw)
					if err != nil {
						t.Fatalf("device %d frame %d: %v", dev, i, err)
					}
					formats[d.format]++
					maxSize = max(maxSize, d.size)
					sz := d.img.Bounds().Size()
					if i == 0 {
						first = sz
					} else if sz != first {
						t.Errorf("device %d: frame %d is %v, the first %v: a display does not change size", dev, i, sz, first)
					}
					if sz.X < 320 || sz.X > 640 || sz.Y != sz.X/5+32 {
						t.Errorf("device %d: %v, want 320..640 wide and a height of width/5+32", dev, sz)
					}
					lo, hi := lumaRange(d.img)
					if hi-lo < 100 {
						t.Errorf("device %d frame %d: luma %d..%d, no legible text", dev, i, lo, hi)
					}
					if i == 0 {
						if c := color.GrayModel.Convert(d.img.At(2, 2)).(color.Gray).Y; c > 128 {
							light++
						} else {
							dark++
						}
					}
					frames = append(frames, d.b64)
				}
				for i := 1; i < len(frames); i++ {
					if frames[i] == frames[i-1] {
						t.Errorf("device %d: frame %d is frame %d again: the reading and the noise change", dev, i, i-1)
					}
				}
			}
			t.Logf("formats %v, %d light and %d dark displays, largest input %d bytes", formats, light, dark, maxSize)
			if variant == "default" && (formats["png"] == 0 || formats["jpeg"] == 0 || light == 0 || dark == 0) {
				t.Errorf("formats %v, %d light and %d dark displays: want PNG and JPEG, light and dark", formats, light, dark)
			}
		})
	}
}

// The readings move as a meter, a thermostat and a clock do.
func TestOCRReadings(t *testing.T) {
	fonts, err := loadOCRFonts("")
	if err != nil {
		t.Fatal(err)
	}
	tile := newNoiseTile(rand.New(rand.NewPCG(1, 1)), 64, 64)
	o := InputOptions{OCRWidth: 400}
	o.setDefaults()
	kinds := map[int]int{}
	for dev := range unlessRace(30, 12) {
		d, err := newDisplay(fonts, tile, o, rand.New(rand.NewPCG(9, uint64(dev))))
		if err != nil {
			t.Fatal(err)
		}
		kinds[d.kind]++
		var prev, first string
		for i := range 8 {
			in, err := d.next()
			if err != nil {
				t.Fatal(err)
			}
			if d.lastW != 400 || d.lastH != 112 {
				t.Fatalf("%dx%d, want OCRWidth 400 and a height of 112", d.lastW, d.lastH)
			}
			if i == 0 {
				raw, _ := json.Marshal(in)
				if _, err := decodeImageInput(raw); err != nil {
					t.Fatalf("%s: %v", d.text, err)
				}
			}
			switch d.kind {
			case meterDisplay:
				v, err := strconv.ParseFloat(strings.TrimSuffix(d.text, " kWh"), 64)
				if err != nil || len(d.text) != len("004521.7 kWh") {
					t.Fatalf("meter reads %q", d.text)
				}
				if i > 0 {
					// 0.05-0.55 kWh a reading, shown to 0.1 kWh.
					p, _ := strconv.ParseFloat(strings.TrimSuffix(prev, " kWh"), 64)
					if v < p || v-p > 0.65 {
						t.Errorf("meter went from %s to %s", prev, d.text)
					}
				}
				if i == 7 {
					f, _ := strconv.ParseFloat(strings.TrimSuffix(first, " kWh"), 64)
					if v-f < 0.3 {
						t.Errorf("meter went from %s to %s in 7 readings", first, d.text)
					}
				}
			case thermostatDisplay:
				v, err := strconv.ParseFloat(strings.TrimSuffix(d.text, "°C"), 64)
				if err != nil || v < 12 || v > 30 {
					t.Errorf("thermostat reads %q", d.text)
				}
			case clockDisplay:
				at, err := time.Parse("15:04", d.text)
				if err != nil {
					t.Fatalf("clock reads %q: %v", d.text, err)
				}
				if i > 0 {
					p, _ := time.Parse("15:04", prev)
					if diff := at.Sub(p); diff != time.Minute && diff != time.Minute-24*time.Hour {
						t.Errorf("clock went from %s to %s", prev, d.text)
					}
				}
			}
			prev = d.text
			if i == 0 {
				first = d.text
			}
		}
	}
	if len(kinds) != numDisplays {
		t.Errorf("display kinds of the devices: %v, want all %d", kinds, numDisplays)
	}
}

func TestDetectInput(t *testing.T) {
	for _, variant := range []string{"default", "synthetic", "missing"} {
		t.Run(variant, func(t *testing.T) {
			f, src := prepareShared(t, "detect", variant)
			photos, _ := filepath.Glob(filepath.Join(defaultPhotoDir, "*.jpg"))
			switch {
			case variant == "default" && len(photos) > 0:
				if src.Fallback || !strings.Contains(src.Description, "photos from "+defaultPhotoDir) {
					t.Errorf("darknet's photos are there, but the source is %+v", src)
				}
			case variant == "missing":
				if !src.Fallback || !strings.Contains(src.Description, "in place of photos: no photos") {
					t.Errorf("no photos, but the source is %+v", src)
				}
			case variant == "synthetic":
				if !src.Fallback || !strings.Contains(src.Description, "synthetic frames") {
					t.Errorf("synthetic asked for, but the source is %+v", src)
				}
			}
			seen := map[string]bool{} // decoded once each
			var maxSize int
			for dev := range 4 {
				gen := f("d", rand.New(rand.NewPCG(6, uint64(dev))))
				var prev string
				for i, raw := range inputJSON(t, gen, 40) {
					if string(raw) == prev {
						t.Errorf("device %d frame %d is the frame before again", dev, i)
					}
					prev = string(raw)
					if seen[prev] {
						continue
					}
					seen[prev] = true
					d, err := decodeImageInput(raw)
					if err != nil {
						t.Fatalf("device %d frame %d: %v", dev, i, err)
					}
					sz := d.img.Bounds().Size()
					if d.format != "jpeg" || max(sz.X, sz.Y) > 640 || min(sz.X, sz.Y) < 64 {
						t.Errorf("device %d frame %d: %s %v, want a JPEG at most 640 px on its long side", dev, i, d.format, sz)
					}
					maxSize = max(maxSize, d.size)
				}
			}
			// 4 cameras × 50 frames, staying 5-20 frames on a scene of 6 frames.
			if len(seen) < 2*frameVariants {
				t.Errorf("%d different frames, want frames of several scenes", len(seen))
			}
			t.Logf("%d different frames, largest input %d bytes", len(seen), maxSize)
		})
	}
}

// The frame size is honoured.
func TestDetectFrameSize(t *testing.T) {
	f, _, err := PrepareInput(t.Context(), "detect", InputOptions{FrameSize: 200, Synthetic: true})
	if err != nil {
		t.Fatal(err)
	}
	gen := f("d", rand.New(rand.NewPCG(1, 1)))
	for i := range 8 {
		raw, _ := json.Marshal(gen())
		d, err := decodeImageInput(raw)
		if err != nil {
			t.Fatal(err)
		}
		if sz := d.img.Bounds().Size(); sz != image.Pt(200, 150) {
			t.Errorf("frame %d is %v, want 200x150", i, sz)
		}
	}
}

// An image too big for the input limit is re-encoded at a lower quality,
// then shrunk, until it fits.
func TestFitJPEG(t *testing.T) {
	img := syntheticFrame(0, 2, 640, 480, rand.New(rand.NewPCG(1, 1)))
	for _, tt := range []struct {
		limit       int
		wantQ       int
		wantShrunk  bool
		wantErrText string
	}{
		{limit: 60 << 10, wantQ: 85},
		{limit: 40 << 10, wantQ: 55},
		{limit: 10 << 10, wantShrunk: true},
		{limit: 200, wantErrText: "does not fit in 200 bytes"},
	} {
		b, q, size, err := fitJPEG(img, tt.limit, 0)
		if tt.wantErrText != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErrText) {
				t.Errorf("limit %d: err = %v, want %q", tt.limit, err, tt.wantErrText)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		dec, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		got := imageInputSize(len(b))
		t.Logf("limit %d: %v at quality %d, %d bytes of input", tt.limit, size, q, got)
		switch {
		case got > tt.limit:
			t.Errorf("limit %d: %d bytes", tt.limit, got)
		case dec.Bounds().Size() != size:
			t.Errorf("limit %d: said %v, is %v", tt.limit, size, dec.Bounds().Size())
		case tt.wantShrunk != (size != image.Pt(640, 480)):
			t.Errorf("limit %d: size %v", tt.limit, size)
		case !tt.wantShrunk && q < tt.wantQ:
			t.Errorf("limit %d: quality %d, want at least %d", tt.limit, q, tt.wantQ)
		}
	}
}

// A photo directory of the user's: JPEGs are used, anything else skipped.
func TestDetectPhotoDir(t *testing.T) {
	dir := t.TempDir()
	img := image.NewRGBA(image.Rect(0, 0, 900, 300))
	for x := range 900 {
		fillRect(img, image.Rect(x, 0, x+1, 300), color.RGBA{uint8(x / 4), 100, uint8(255 - x/4), 255})
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"wide.jpg": buf.Bytes(), "broken.jpg": []byte("not a jpeg"), "notes.txt": []byte("x")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, src, err := PrepareInput(t.Context(), "detect", InputOptions{PhotoDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if src.Fallback || !strings.Contains(src.Description, "1 photos from "+dir+" (wide)") {
		t.Errorf("source %+v, want the one readable photo", src)
	}
	raw, _ := json.Marshal(f("d", rand.New(rand.NewPCG(1, 1)))())
	d, err := decodeImageInput(raw)
	if err != nil {
		t.Fatal(err)
	}
	if sz := d.img.Bounds().Size(); sz.X != 640 || sz.Y < 190 || sz.Y > 245 {
		t.Errorf("a 900x300 photo became %v, want a crop of 88%% or more of each side shrunk to 640 wide", sz)
	}

	// Only broken photos: an error naming them.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "a.jpg"), []byte("nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := PrepareInput(t.Context(), "detect", InputOptions{PhotoDir: bad}); err == nil || !strings.Contains(err.Error(), "a.jpg") {
		t.Errorf("err = %v, want one naming a.jpg", err)
	}
}

func BenchmarkOCRFrame(b *testing.B) {
	fonts, err := loadOCRFonts(defaultFontDir)
	if err != nil {
		b.Fatal(err)
	}
	tile := newNoiseTile(rand.New(rand.NewPCG(1, 1)), 509, 211)
	for _, w := range []int{320, 640} {
		b.Run(strconv.Itoa(w), func(b *testing.B) {
			o := InputOptions{OCRWidth: w}
			o.setDefaults()
			d, err := newDisplay(fonts, tile, o, rand.New(rand.NewPCG(1, 1)))
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := d.next(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVADChunk(b *testing.B) {
	clips, _, _, err := speech(b.Context(), InputOptions{Synthetic: true})
	if err != nil {
		b.Fatal(err)
	}
	s := newVADStream(clips, 8000, rand.New(rand.NewPCG(1, 1)))
	for b.Loop() {
		_ = s.next()
	}
}

func BenchmarkDetectFrame(b *testing.B) {
	f, _, err := PrepareInput(b.Context(), "detect", InputOptions{Synthetic: true})
	if err != nil {
		b.Fatal(err)
	}
	gen := f("d", rand.New(rand.NewPCG(1, 1)))
	for b.Loop() {
		if _, err := json.Marshal(gen()); err != nil {
			b.Fatal(err)
		}
	}
}
