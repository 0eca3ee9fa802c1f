// Package media decodes what devices send to models: base64 strings, JPEG
// and PNG images, and 16-bit PCM audio. Every failure is an
// inference.InvalidInput naming the request field it came from.
package media

import (
	"bytes"
	"encoding/base64"
	"errors"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"strings"

	"github.com/mqttinfer/mqttinfer/inference"
)

// Base64 decodes s, the value of field, as standard or URL-safe base64,
// padded or not, optionally behind a data URL prefix
// ("data:image/png;base64,"). Line breaks are ignored (MIME-style wrapped
// base64). An empty result is an error: what is describes the content
// wanted ("a base64 JPEG or PNG").
func Base64(field, s, what string) ([]byte, error) {
	if strings.HasPrefix(s, "data:") {
		i := strings.Index(s, ",")
		if i < 0 || !strings.HasSuffix(s[:i], ";base64") {
			return nil, inference.InvalidInput("%s is a data URL without \";base64,\": only base64 data URLs are accepted", field)
		}
		s = s[i+1:]
	}
	if s == "" {
		return nil, inference.InvalidInput("%s is empty: it must hold %s", field, what)
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
		return nil, inference.InvalidInput("%s is not valid base64: %v", field, err)
	}
	if len(b) == 0 {
		return nil, inference.InvalidInput("%s is empty: it must hold %s", field, what)
	}
	return b, nil
}

// Image decodes b, the bytes of field, as a JPEG or PNG of at most
// maxPixels pixels. The size is checked from the header before any pixel
// is decoded, so an image over the limit costs no more than its header.
func Image(field string, b []byte, maxPixels int) (image.Image, error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		if errors.Is(err, image.ErrFormat) {
			return nil, inference.InvalidInput("%s is not a JPEG or PNG image (unknown format)", field)
		}
		return nil, inference.InvalidInput("%s has a corrupt or truncated header: %v", field, err)
	}
	var decode func(io.Reader) (image.Image, error)
	switch format {
	case "jpeg":
		decode = jpeg.Decode
	case "png":
		decode = png.Decode
	default:
		return nil, inference.InvalidInput("%s is a %s image; only JPEG and PNG are supported", field, clip(format))
	}
	w, h := int64(cfg.Width), int64(cfg.Height)
	if w <= 0 || h <= 0 {
		return nil, inference.InvalidInput("%s has zero size (%dx%d)", field, w, h)
	}
	if n := w * h; n > int64(maxPixels) {
		return nil, inference.InvalidInput("%s: image is %dx%d = %d pixels, the limit is %d", field, w, h, n, maxPixels)
	}
	img, err := decode(bytes.NewReader(b))
	if err != nil {
		return nil, inference.InvalidInput("%s is a truncated or corrupt %s: %v", field, strings.ToUpper(format), err)
	}
	r := img.Bounds()
	if int64(r.Dx()) != w || int64(r.Dy()) != h {
		return nil, inference.InvalidInput("%s decodes to %dx%d, its header says %dx%d", field, r.Dx(), r.Dy(), w, h)
	}
	return img, nil
}

// PCM16 turns b, the bytes of field, into int16 little-endian mono
// samples scaled to [-1, 1).
func PCM16(field string, b []byte) ([]float32, error) {
	if len(b)%2 != 0 {
		return nil, inference.InvalidInput("%s decodes to %d bytes, an odd number: samples are 16-bit (2 bytes each, little-endian)", field, len(b))
	}
	out := make([]float32, len(b)/2)
	for i := range out {
		out[i] = float32(int16(uint16(b[2*i])|uint16(b[2*i+1])<<8)) / 32768
	}
	return out, nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
