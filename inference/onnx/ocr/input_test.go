package ocr

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/png"
	"runtime"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// small is a 40×20 image with a dark bar, for the decoding tests.
func small() *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, 40, 20))
	for i := range img.Pix {
		img.Pix[i] = 0xff
	}
	for y := 8; y < 12; y++ {
		for x := 5; x < 35; x++ {
			o := img.PixOffset(x, y)
			img.Pix[o], img.Pix[o+1], img.Pix[o+2] = 10, 20, 30
		}
	}
	return img
}

// pngHeader is a PNG signature and IHDR chunk (valid CRC) claiming w×h
// RGBA pixels, with no image data after it.
func pngHeader(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 17)
	copy(ihdr, "IHDR")
	binary.BigEndian.PutUint32(ihdr[4:], w)
	binary.BigEndian.PutUint32(ihdr[8:], h)
	ihdr[12], ihdr[13] = 8, 6 // 8-bit RGBA
	binary.Write(&b, binary.BigEndian, uint32(13))
	b.Write(ihdr)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(ihdr))
	return b.Bytes()
}

// jpegWithSize patches the frame header of a baseline JPEG to say w×h.
func jpegWithSize(tb testing.TB, j []byte, w, h uint16) []byte {
	tb.Helper()
	j = bytes.Clone(j)
	i := bytes.Index(j, []byte{0xff, 0xc0})
	if i < 0 {
		tb.Fatal("no SOF0 marker")
	}
	binary.BigEndian.PutUint16(j[i+5:], h)
	binary.BigEndian.PutUint16(j[i+7:], w)
	return j
}

// inputFor wraps encoded image bytes in the model's input.
func inputFor(b []byte) json.RawMessage {
	in, _ := json.Marshal(map[string]string{"image": base64.StdEncoding.EncodeToString(b)})
	return in
}

// TestBadInput checks that every kind of bad input is an InvalidInput
// error whose message names the field and says what is wrong. It needs no
// runtime: the input is rejected before the models run.
func TestBadInput(t *testing.T) {
	pngB := encodePNG(t, small())
	jpegB := encodeJPEG(t, small(), 90)
	var gifB bytes.Buffer
	if err := gif.Encode(&gifB, small(), nil); err != nil {
		t.Fatal(err)
	}
	m := &Model{}
	if err := m.cfg.defaults(); err == nil {
		t.Fatal("defaults without Dir accepted")
	}
	m.cfg = Config{Dir: "x"}
	if err := m.cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, input, params, want string
	}{
		{"no input", ``, ``, "input is required"},
		{"null", `null`, ``, "input is required"},
		{"array", `[1]`, ``, "must be a JSON object"},
		{"broken JSON", `{"image": "abc"`, ``, "not a valid JSON object"},
		{"unknown field", `{"image": "", "img": 1}`, ``, `unknown field "img"`},
		{"no image", `{}`, ``, "input.image is required"},
		{"image not a string", `{"image": 12}`, ``, "input.image must be a string"},
		{"image null", `{"image": null}`, ``, "input.image must be a string"},
		{"empty image", `{"image": ""}`, ``, "input.image is empty"},
		{"bad base64", `{"image": "iVBOR%%%"}`, ``, "input.image is not valid base64"},
		{"data URL not base64", `{"image": "data:image/png,abc"}`, ``, "input.image is a data URL without"},
		{"not an image", string(inputFor([]byte("hello, this is text, not a picture"))), ``, "input.image is not a JPEG or PNG"},
		{"gif", string(inputFor(gifB.Bytes())), ``, "input.image is a gif image; only JPEG and PNG"},
		{"truncated PNG header", string(inputFor(pngB[:20])), ``, "input.image has a corrupt or truncated header"},
		{"truncated PNG", string(inputFor(pngB[:len(pngB)/2])), ``, "input.image is a truncated or corrupt PNG"},
		{"truncated JPEG header", string(inputFor(jpegB[:len(jpegB)/2])), ``, "input.image has a corrupt or truncated header: unexpected EOF"},
		{"truncated JPEG", string(inputFor(jpegB[:len(jpegB)-10])), ``, "input.image is a truncated or corrupt JPEG"},
		{"corrupt PNG data", string(inputFor(append(pngB[:60:60], bytes.Repeat([]byte{0x55}, 100)...))), ``, "input.image is a truncated or corrupt PNG"},
		{"over the pixel limit", string(inputFor(pngHeader(100000, 100000))), ``, "input.image: image is 100000x100000 = 10000000000 pixels, the limit is 4000000"},
		{"just over the limit", string(inputFor(pngHeader(2001, 2000))), ``, "image is 2001x2000 = 4002000 pixels, the limit is 4000000"},
		{"zero-size JPEG", string(inputFor(jpegWithSize(t, jpegB, 40, 0))), ``, "input.image has zero size (40x0)"},
		{"zero-size PNG", string(inputFor(pngHeader(0, 10))), ``, "input.image has a corrupt or truncated header: png: invalid format: non-positive dimension"},
		{"params not object", string(inputFor(pngB)), `[1]`, "params must be a JSON object"},
		{"params field", string(inputFor(pngB)), `{"lang": "en"}`, `params: unknown field "lang"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Infer(context.Background(), inference.Request{Input: json.RawMessage(c.input), Params: json.RawMessage(c.params)})
			if !inference.IsInvalidInput(err) {
				t.Fatalf("error %v is not InvalidInput", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}

// TestBase64Forms checks the base64 forms accepted: standard and URL-safe
// alphabets, with or without padding, wrapped lines, data URLs.
func TestBase64Forms(t *testing.T) {
	b := encodePNG(t, small())
	std := base64.StdEncoding.EncodeToString(b)
	var wrapped strings.Builder
	for i := 0; i < len(std); i += 76 {
		wrapped.WriteString(std[i:min(i+76, len(std))] + "\r\n")
	}
	for _, s := range []string{
		std,
		base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b),
		base64.RawURLEncoding.EncodeToString(b),
		wrapped.String(),
		"data:image/png;base64," + std,
	} {
		in, _ := json.Marshal(map[string]string{"image": s})
		got, err := decodeInput(in)
		if err != nil {
			t.Errorf("%.30q…: %v", s, err)
			continue
		}
		if !bytes.Equal(got, b) {
			t.Errorf("%.30q…: decoded %d bytes, want %d", s, len(got), len(b))
		}
	}
	if err := decodeParams(json.RawMessage(`{}`)); err != nil {
		t.Errorf("empty params: %v", err)
	}
}

// TestDecodeImage checks the conversions into RGBA: transparency over
// white, grey, paletted and 16-bit PNGs, and JPEG.
func TestDecodeImage(t *testing.T) {
	check := func(name string, b []byte, x, y int, want color.RGBA, tol int) {
		t.Helper()
		img, err := decodeImage(b, 1000)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if img.Rect != image.Rect(0, 0, 40, 20) {
			t.Fatalf("%s: bounds %v", name, img.Rect)
		}
		got := img.RGBAAt(x, y)
		d := max(abs(int(got.R)-int(want.R)), abs(int(got.G)-int(want.G)), abs(int(got.B)-int(want.B)))
		if d > tol || got.A != 255 {
			t.Errorf("%s: pixel (%d,%d) = %v, want %v", name, x, y, got, want)
		}
	}
	transparent := image.NewNRGBA(image.Rect(0, 0, 40, 20)) // all transparent black
	transparent.SetNRGBA(10, 10, color.NRGBA{0, 0, 0, 255})
	check("transparent over white", encodePNG(t, transparent), 0, 0, color.RGBA{255, 255, 255, 255}, 0)
	check("opaque pixel of a transparent PNG", encodePNG(t, transparent), 10, 10, color.RGBA{0, 0, 0, 255}, 0)
	gray := image.NewGray(image.Rect(0, 0, 40, 20))
	gray.SetGray(3, 4, color.Gray{77})
	check("grey", encodePNG(t, gray), 3, 4, color.RGBA{77, 77, 77, 255}, 0)
	pal := image.NewPaletted(image.Rect(0, 0, 40, 20), color.Palette{color.RGBA{1, 2, 3, 255}, color.RGBA{200, 100, 50, 255}})
	pal.SetColorIndex(5, 5, 1)
	check("paletted", encodePNG(t, pal), 5, 5, color.RGBA{200, 100, 50, 255}, 0)
	deep := image.NewRGBA64(image.Rect(0, 0, 40, 20))
	deep.SetRGBA64(6, 7, color.RGBA64{0x1234, 0x8000, 0xffff, 0xffff})
	check("16-bit", encodePNG(t, deep), 6, 7, color.RGBA{0x12, 0x80, 0xff, 255}, 0)
	check("jpeg", encodeJPEG(t, small(), 95), 20, 10, color.RGBA{10, 20, 30, 255}, 12)
	if _, err := decodeImage(encodePNG(t, small()), 799); !inference.IsInvalidInput(err) {
		t.Errorf("800 pixels with a limit of 799: %v", err)
	}
}

func abs(x int) int { return max(x, -x) }

// TestLimitBeforeDecode checks that an image over the pixel limit is
// refused from its header: a PNG that claims 30000×30000 pixels (3.6 GB as
// RGBA) and is followed by real, endless-looking image data costs almost
// nothing to refuse.
func TestLimitBeforeDecode(t *testing.T) {
	b := pngHeader(30000, 30000)
	b = append(b, bytes.Repeat([]byte{0}, 1<<20)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := decodeImage(b, DefaultMaxPixels)
	runtime.ReadMemStats(&after)
	if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), "the limit is 4000000") {
		t.Fatalf("error %v", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 256<<10 {
		t.Errorf("refusing the image allocated %d bytes", d)
	}
}

// pngOf encodes img as PNG with no error path, for the fuzz seeds.
func pngOf(img image.Image) []byte {
	var b bytes.Buffer
	_ = png.Encode(&b, img)
	return b.Bytes()
}
