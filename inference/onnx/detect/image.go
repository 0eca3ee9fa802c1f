package detect

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/jpeg"
	"image/png"
	"strings"

	"golang.org/x/image/draw"

	"github.com/mqttinfer/mqttinfer/inference"
)

// The network's input: 416×416 BGR, normalised with NanoDet's own mean and
// standard deviation (on 0..255 values, per channel in B, G, R order).
const (
	// InputSize is the side of the square the image is letterboxed into.
	InputSize = 416
	planeLen  = InputSize * InputSize
	tensorLen = 3 * planeLen
)

var (
	mean = [3]float32{103.53, 116.28, 123.675}
	std  = [3]float32{57.375, 57.12, 58.395}
)

// decodeBase64 decodes s as standard base64, padded or not, after an
// optional "data:image/...;base64," prefix.
func decodeBase64(s string) ([]byte, error) {
	if strings.HasPrefix(s, "data:") {
		i := strings.Index(s, ";base64,")
		if i < 0 {
			return nil, inference.InvalidInput("input.image: a data URL must be base64 (data:image/jpeg;base64,...)")
		}
		s = s[i+len(";base64,"):]
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		var err2 error
		if b, err2 = base64.RawStdEncoding.DecodeString(s); err2 != nil {
			return nil, inference.InvalidInput("input.image is not valid base64 (standard alphabet): %v", err)
		}
	}
	if len(b) == 0 {
		return nil, inference.InvalidInput("input.image is empty: give a base64 JPEG or PNG image")
	}
	return b, nil
}

// decodeImage decodes a JPEG or PNG image of at most maxPixels pixels. The
// size comes from the header, before the pixels are decoded, so an
// oversized image costs nothing.
func decodeImage(data []byte, maxPixels int) (image.Image, error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, inference.InvalidInput("input.image is not a readable JPEG or PNG image: %v", err)
	}
	if format != "jpeg" && format != "png" {
		return nil, inference.InvalidInput("input.image is a %s image; send JPEG or PNG", format)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, inference.InvalidInput("input.image has no pixels (%dx%d)", cfg.Width, cfg.Height)
	}
	if px := int64(cfg.Width) * int64(cfg.Height); px > int64(maxPixels) {
		return nil, inference.InvalidInput("input.image is %dx%d = %d pixels, over the limit of %d: scale it down (the model sees %dx%d)",
			cfg.Width, cfg.Height, px, maxPixels, InputSize, InputSize)
	}
	var img image.Image
	if format == "jpeg" {
		img, err = jpeg.Decode(bytes.NewReader(data))
	} else {
		img, err = png.Decode(bytes.NewReader(data))
	}
	if err != nil {
		return nil, inference.InvalidInput("input.image: the %s data is corrupt or truncated: %v", format, err)
	}
	if b := img.Bounds(); b.Dx() != cfg.Width || b.Dy() != cfg.Height {
		return nil, inference.InvalidInput("input.image: the %s header says %dx%d, the data %dx%d", format, cfg.Width, cfg.Height, b.Dx(), b.Dy())
	}
	return img, nil
}

// letterbox maps between the image and the network's input: the image is
// scaled to fit InputSize×InputSize, keeping its aspect ratio, and
// centred on black, as NanoDet's own keep_ratio preprocessing does.
type letterbox struct {
	w, h   int     // image size
	x0, y0 int     // where the scaled image starts in the input
	sw, sh int     // scaled image size
	sx, sy float64 // input pixels per image pixel
}

func newLetterbox(w, h int) letterbox {
	s := min(float64(InputSize)/float64(w), float64(InputSize)/float64(h))
	sw := min(max(int(float64(w)*s+0.5), 1), InputSize)
	sh := min(max(int(float64(h)*s+0.5), 1), InputSize)
	lb := letterbox{w: w, h: h, sw: sw, sh: sh, x0: (InputSize - sw) / 2, y0: (InputSize - sh) / 2}
	lb.sx, lb.sy = float64(sw)/float64(w), float64(sh)/float64(h)
	return lb
}

// toImageX maps an x in the network's input to the image, clamped to it.
func (lb *letterbox) toImageX(x float32) float64 {
	return min(max((float64(x)-float64(lb.x0))/lb.sx, 0), float64(lb.w))
}

// toImageY maps a y in the network's input to the image, clamped to it.
func (lb *letterbox) toImageY(y float32) float64 {
	return min(max((float64(y)-float64(lb.y0))/lb.sy, 0), float64(lb.h))
}

// preprocess letterboxes img into dst (tensorLen floats: planes B, G, R,
// normalised) and returns the mapping. canvas is scratch space of
// InputSize×InputSize.
func preprocess(img image.Image, dst []float32, canvas *image.RGBA) letterbox {
	b := img.Bounds()
	lb := newLetterbox(b.Dx(), b.Dy())
	clear(canvas.Pix)
	r := image.Rect(lb.x0, lb.y0, lb.x0+lb.sw, lb.y0+lb.sh)
	// Plain bilinear, as NanoDet's training pipeline resizes (OpenCV's
	// INTER_LINEAR, no antialiasing); 4-15x faster than draw.BiLinear,
	// with the same detections on the sample photos.
	draw.ApproxBiLinear.Scale(canvas, r, img, b, draw.Src, nil)
	pb, pg, pr := dst[:planeLen], dst[planeLen:2*planeLen], dst[2*planeLen:tensorLen]
	pix := canvas.Pix
	for i := range planeLen {
		p := pix[4*i : 4*i+3 : 4*i+3]
		pr[i] = (float32(p[0]) - mean[2]) / std[2]
		pg[i] = (float32(p[1]) - mean[1]) / std[1]
		pb[i] = (float32(p[2]) - mean[0]) / std[0]
	}
	return lb
}
