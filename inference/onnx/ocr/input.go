package ocr

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/jpeg"
	"image/png"
	"io"
	"strings"

	"github.com/mqttinfer/mqttinfer/inference"
)

// decodeInput decodes the request input, {"image": "<base64>"}, into the
// image's encoded bytes.
func decodeInput(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, inference.InvalidInput(`input is required: a JSON object like {"image": "<base64 JPEG or PNG>"}`)
	}
	if raw[0] != '{' {
		return nil, inference.InvalidInput(`input must be a JSON object like {"image": "<base64 JPEG or PNG>"}`)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, inference.InvalidInput("input is not a valid JSON object: %v", err)
	}
	for k := range fields {
		if k != "image" {
			return nil, inference.InvalidInput("input: unknown field %q (the only field is image)", clip(k))
		}
	}
	iraw, ok := fields["image"]
	if !ok {
		return nil, inference.InvalidInput("input.image is required: a base64 JPEG or PNG")
	}
	var s string
	if iraw = bytes.TrimSpace(iraw); len(iraw) == 0 || iraw[0] != '"' {
		return nil, inference.InvalidInput("input.image must be a string of base64 JPEG or PNG data")
	}
	if err := json.Unmarshal(iraw, &s); err != nil {
		return nil, inference.InvalidInput("input.image is not a valid JSON string: %v", err)
	}
	return decodeBase64(s)
}

// decodeParams accepts an absent, null or empty params object: the model
// takes no per-request options.
func decodeParams(raw json.RawMessage) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return inference.InvalidInput("params must be a JSON object (ocr takes none): %v", err)
	}
	for k := range fields {
		return inference.InvalidInput("params: unknown field %q (ocr takes no params)", clip(k))
	}
	return nil
}

// decodeBase64 decodes standard or URL-safe base64, padded or not,
// optionally behind a data URL prefix ("data:image/png;base64,").
// Line breaks are ignored (MIME-style wrapped base64).
func decodeBase64(s string) ([]byte, error) {
	if strings.HasPrefix(s, "data:") {
		i := strings.Index(s, ",")
		if i < 0 || !strings.HasSuffix(s[:i], ";base64") {
			return nil, inference.InvalidInput("input.image is a data URL without \";base64,\": only base64 data URLs are accepted")
		}
		s = s[i+1:]
	}
	if s == "" {
		return nil, inference.InvalidInput("input.image is empty: it must hold a base64 JPEG or PNG")
	}
	if strings.ContainsAny(s, "\r\n") {
		s = strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, s)
	}
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if len(s)%4 != 0 && !strings.HasSuffix(s, "=") {
		enc = enc.WithPadding(base64.NoPadding)
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, inference.InvalidInput("input.image is not valid base64: %v", err)
	}
	if len(b) == 0 {
		return nil, inference.InvalidInput("input.image is empty: it must hold a base64 JPEG or PNG")
	}
	return b, nil
}

// decodeImage decodes a JPEG or PNG of at most maxPixels pixels into an
// opaque RGBA image: pixels with alpha are composited over white, as a
// display screenshot with a transparent background is read. The size is
// checked from the header before any pixel is decoded, so an image over the
// limit costs no more than its header.
func decodeImage(b []byte, maxPixels int) (*image.RGBA, error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		if errors.Is(err, image.ErrFormat) {
			return nil, inference.InvalidInput("input.image is not a JPEG or PNG image (unknown format)")
		}
		return nil, inference.InvalidInput("input.image has a corrupt or truncated header: %v", err)
	}
	var decode func(io.Reader) (image.Image, error)
	switch format {
	case "jpeg":
		decode = jpeg.Decode
	case "png":
		decode = png.Decode
	default:
		return nil, inference.InvalidInput("input.image is a %s image; only JPEG and PNG are supported", clip(format))
	}
	w, h := int64(cfg.Width), int64(cfg.Height)
	if w <= 0 || h <= 0 {
		return nil, inference.InvalidInput("input.image has zero size (%dx%d)", w, h)
	}
	if n := w * h; n > int64(maxPixels) {
		return nil, inference.InvalidInput("input.image: image is %dx%d = %d pixels, the limit is %d", w, h, n, maxPixels)
	}
	img, err := decode(bytes.NewReader(b))
	if err != nil {
		return nil, inference.InvalidInput("input.image is a truncated or corrupt %s: %v", strings.ToUpper(format), err)
	}
	r := img.Bounds()
	if int64(r.Dx()) != w || int64(r.Dy()) != h {
		return nil, inference.InvalidInput("input.image decodes to %dx%d, its header says %dx%d", r.Dx(), r.Dy(), w, h)
	}
	return toRGBA(img), nil
}

// toRGBA converts img to an RGBA image at the origin, composited over white.
func toRGBA(img image.Image) *image.RGBA {
	r := img.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, r.Dx(), r.Dy()))
	if o, ok := img.(interface{ Opaque() bool }); ok && o.Opaque() {
		draw.Draw(dst, dst.Bounds(), img, r.Min, draw.Src)
		return dst
	}
	for i := range dst.Pix {
		dst.Pix[i] = 0xff
	}
	draw.Draw(dst, dst.Bounds(), img, r.Min, draw.Over)
	return dst
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 40
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s…", strings.ToValidUTF8(s[:n], ""))
}
