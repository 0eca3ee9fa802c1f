package ocr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/draw"
	"strings"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/media"
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

// decodeBase64 decodes input.image: standard or URL-safe base64, padded
// or not, optionally behind a data URL prefix, line breaks ignored.
func decodeBase64(s string) ([]byte, error) {
	return media.Base64("input.image", s, "a base64 JPEG or PNG")
}

// decodeImage decodes a JPEG or PNG of at most maxPixels pixels into an
// opaque RGBA image: pixels with alpha are composited over white, as a
// display screenshot with a transparent background is read.
func decodeImage(b []byte, maxPixels int) (*image.RGBA, error) {
	img, err := media.Image("input.image", b, maxPixels)
	if err != nil {
		return nil, err
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
