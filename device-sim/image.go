package devicesim

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"

	xdraw "golang.org/x/image/draw"
)

// ImageInput is one input of the "ocr" and "detect" models.
type ImageInput struct {
	// Image is standard, padded base64 of a JPEG or PNG.
	Image string `json:"image"`
}

// imageJSONOverhead is what ImageInput adds around the base64.
const imageJSONOverhead = len(`{"image":""}`)

// imageInputSize is the size of the input JSON of an encoded image of n bytes.
func imageInputSize(n int) int { return base64.StdEncoding.EncodedLen(n) + imageJSONOverhead }

// JPEG qualities tried, best first, before an image is shrunk to fit.
var jpegQualities = []int{85, 75, 65, 55}

// minFitSide is the shortest long side fitJPEG shrinks an image to.
const minFitSide = 64

// fitJPEG encodes img as a JPEG whose input JSON is at most limit bytes: at
// the best quality of jpegQualities that fits, shrinking the image when
// none does (by the square root of how much too big it is at the lowest
// quality, as a JPEG's size goes with its pixels). It starts at
// jpegQualities[from], to skip qualities known to be too high. It returns
// the JPEG, its quality and its size.
func fitJPEG(img image.Image, limit, from int) ([]byte, int, image.Point, error) {
	for {
		var size int
		for _, q := range jpegQualities[min(max(from, 0), len(jpegQualities)-1):] {
			b, err := encodeJPEG(img, q)
			if err != nil {
				return nil, 0, image.Point{}, err
			}
			if size = imageInputSize(len(b)); size <= limit {
				return b, q, img.Bounds().Size(), nil
			}
		}
		sz := img.Bounds().Size()
		if max(sz.X, sz.Y) <= minFitSide {
			return nil, 0, image.Point{}, fmt.Errorf("a %dx%d JPEG does not fit in %d bytes of input even at quality %d", sz.X, sz.Y, limit, jpegQualities[len(jpegQualities)-1])
		}
		from = 0
		f := max(0.25, min(0.9, 0.95*math.Sqrt(float64(limit)/float64(size))))
		img = scaleTo(img, max(int(float64(sz.X)*f), 1), max(int(float64(sz.Y)*f), 1), xdraw.ApproxBiLinear)
	}
}

func encodeJPEG(img image.Image, quality int) ([]byte, error) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: quality}); err != nil {
		return nil, fmt.Errorf("encoding a JPEG: %w", err)
	}
	return buf.Bytes(), nil
}

// pngEncoder favours speed: a simulator renders a display per request.
var pngEncoder = png.Encoder{CompressionLevel: png.BestSpeed}

func encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := pngEncoder.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("encoding a PNG: %w", err)
	}
	return buf.Bytes(), nil
}

// scaleTo returns img resized to w×h with the given interpolator.
func scaleTo(img image.Image, w, h int, how xdraw.Interpolator) *image.RGBA {
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	how.Scale(dst, dst.Bounds(), img, img.Bounds(), xdraw.Src, nil)
	return dst
}

// fitSide returns w×h scaled down, keeping the aspect ratio, so that its
// longer side is at most side (never up).
func fitSide(w, h, side int) (int, int) {
	if long := max(w, h); long > side {
		return max(w*side/long, 1), max(h*side/long, 1)
	}
	return w, h
}

// toRGBA copies img into a new RGBA image whose bounds start at (0, 0).
func toRGBA(img image.Image) *image.RGBA {
	b := img.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	xdraw.Draw(dst, dst.Bounds(), img, b.Min, xdraw.Src)
	return dst
}

// adjust applies a gain and an offset to the colour channels of img, in place.
func adjust(img *image.RGBA, gain, offset float64) {
	var lut [256]uint8
	for i := range lut {
		lut[i] = clamp8(float64(i)*gain + offset)
	}
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i] = lut[img.Pix[i]]
		img.Pix[i+1] = lut[img.Pix[i+1]]
		img.Pix[i+2] = lut[img.Pix[i+2]]
	}
}

func clamp8(v float64) uint8 {
	return uint8(max(0, min(255, math.Round(v))))
}

// noiseTile is a tile of Gaussian noise, σ = noiseUnit, that images take
// their sensor noise from at a random offset: far cheaper than drawing a
// normal variate per pixel.
type noiseTile struct {
	w, h int
	v    []int8
}

const noiseUnit = 16 // σ of the tile's values

func newNoiseTile(rng *rand.Rand, w, h int) *noiseTile {
	t := &noiseTile{w: w, h: h, v: make([]int8, w*h)}
	for i := range t.v {
		t.v[i] = int8(max(-127, min(127, math.Round(rng.NormFloat64()*noiseUnit))))
	}
	return t
}

// add adds noise of standard deviation sigma (in 8-bit levels) to img, the
// same to each channel of a pixel (luminance noise), from the tile at a
// random offset.
func (t *noiseTile) add(img *image.RGBA, sigma float64, rng *rand.Rand) {
	var lut [256]int
	for i := range lut {
		lut[i] = int(math.Round(float64(int8(uint8(i))) * sigma / noiseUnit))
	}
	b := img.Bounds()
	ox, oy := rng.IntN(t.w), rng.IntN(t.h)
	for y := range b.Dy() {
		row := img.Pix[y*img.Stride:]
		trow := t.v[((y+oy)%t.h)*t.w:]
		for x := range b.Dx() {
			n := lut[uint8(trow[(x+ox)%t.w])]
			p := row[4*x : 4*x+3]
			p[0] = uint8(max(0, min(255, int(p[0])+n)))
			p[1] = uint8(max(0, min(255, int(p[1])+n)))
			p[2] = uint8(max(0, min(255, int(p[2])+n)))
		}
	}
}

// blur3 returns img blurred by a separable [1 2 1]/4 kernel (a slightly
// out-of-focus camera), edges clamped.
func blur3(img *image.RGBA) *image.RGBA {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	tmp := image.NewRGBA(image.Rect(0, 0, w, h))
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h { // horizontal
		src := img.Pix[y*img.Stride : y*img.Stride+4*w]
		dst := tmp.Pix[y*tmp.Stride : y*tmp.Stride+4*w]
		for x := range w {
			l, r := 4*max(x-1, 0), 4*min(x+1, w-1)
			for k := 4 * x; k < 4*x+3; k++ {
				dst[k] = uint8((int(src[l+k-4*x]) + 2*int(src[k]) + int(src[r+k-4*x]) + 2) >> 2)
			}
			dst[4*x+3] = 255
		}
	}
	for y := range h { // vertical
		up := tmp.Pix[max(y-1, 0)*tmp.Stride:][:4*w]
		mid := tmp.Pix[y*tmp.Stride:][:4*w]
		down := tmp.Pix[min(y+1, h-1)*tmp.Stride:][:4*w]
		dst := out.Pix[y*out.Stride:][:4*w]
		for k := range dst {
			dst[k] = uint8((int(up[k]) + 2*int(mid[k]) + int(down[k]) + 2) >> 2)
		}
	}
	return out
}

// grayOf returns img as a grayscale image (for a smaller PNG of a
// black-on-grey display).
func grayOf(img *image.RGBA) *image.Gray {
	b := img.Bounds()
	g := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := range b.Dy() {
		for x := range b.Dx() {
			p := img.Pix[img.PixOffset(x, y):]
			g.Pix[y*g.Stride+x] = uint8((299*int(p[0]) + 587*int(p[1]) + 114*int(p[2]) + 500) / 1000)
		}
	}
	return g
}

// fillRect fills r (clipped to img) with c.
func fillRect(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			i := img.PixOffset(x, y)
			img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, 255
		}
	}
}

// fillEllipse fills the ellipse of centre (cx, cy) and radii rx, ry
// (clipped to img) with c.
func fillEllipse(img *image.RGBA, cx, cy, rx, ry int, c color.RGBA) {
	if rx <= 0 || ry <= 0 {
		return
	}
	r := image.Rect(cx-rx, cy-ry, cx+rx+1, cy+ry+1).Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		dy := float64(y-cy) / float64(ry)
		for x := r.Min.X; x < r.Max.X; x++ {
			dx := float64(x-cx) / float64(rx)
			if dx*dx+dy*dy <= 1 {
				i := img.PixOffset(x, y)
				img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, 255
			}
		}
	}
}

// imageBase64 is the base64 that ImageInput carries.
func imageBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
