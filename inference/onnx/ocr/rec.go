package ocr

import (
	"fmt"
	"image"
	"math"
	"os"
	"slices"
	"strings"
	"unicode/utf8"
)

// Recognition constants, PaddleOCR's for PP-OCRv4 (rec_image_shape 3,48,320).
const (
	recHeight   = 48  // input height of the recogniser
	recMinWidth = 320 // the batch is padded to at least this width
	// recVertical is the height/width ratio from which a crop is taken as
	// vertical text and turned 90° counter-clockwise (PaddleOCR's 1.5).
	recVertical = 1.5
	// maxSuper is the most samples per axis averaged into one recogniser
	// pixel when a crop is scaled down.
	maxSuper = 4
)

// loadKeys reads PaddleOCR's character dictionary (one character a line)
// and returns the recogniser's classes: CTC blank at 0, the dictionary's
// characters from 1, and a space last (PaddleOCR's use_space_char).
func loadKeys(path string) ([]string, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read character dictionary: %w", err)
	}
	if !utf8.Valid(b) {
		return nil, nil, fmt.Errorf("character dictionary %s is not UTF-8", path)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	keys := make([]string, 0, len(lines)+2)
	keys = append(keys, "")
	for _, l := range lines {
		keys = append(keys, strings.TrimSuffix(l, "\r"))
	}
	keys = append(keys, " ")
	return keys, b, nil
}

// crop is one text box prepared for the recogniser.
type crop struct {
	q     quad // corners in reading orientation (turned for vertical text)
	w, h  int  // the box's size in image pixels
	rw    int  // width once scaled to recHeight
	index int  // the box's position in reading order
}

// newCrop measures box q as PaddleOCR's get_rotate_crop_image does and
// turns tall boxes 90° counter-clockwise; maxWidth caps the scaled width.
func newCrop(q quad, index, maxWidth int) crop {
	w := int(max(q[0].dist(q[1]), q[2].dist(q[3])))
	h := int(max(q[0].dist(q[3]), q[1].dist(q[2])))
	if w > 0 && float64(h) >= recVertical*float64(w) {
		q = quad{q[1], q[2], q[3], q[0]}
		w, h = h, w
	}
	w, h = max(w, 1), max(h, 1)
	rw := int(math.Ceil(recHeight * float64(w) / float64(h)))
	return crop{q: q, w: w, h: h, rw: min(max(rw, 1), maxWidth), index: index}
}

// sample is the colour of img at (x, y) by bilinear interpolation, with the
// edge pixels repeated beyond the border (OpenCV's BORDER_REPLICATE).
func sample(img *image.RGBA, x, y float64) (r, g, b float32) {
	bw, bh := img.Rect.Dx(), img.Rect.Dy()
	x = clamp(x, 0, float64(bw-1))
	y = clamp(y, 0, float64(bh-1))
	x0, y0 := int(x), int(y)
	x1, y1 := min(x0+1, bw-1), min(y0+1, bh-1)
	fx, fy := float32(x-float64(x0)), float32(y-float64(y0))
	p := img.Pix
	o00, o01 := y0*img.Stride+4*x0, y0*img.Stride+4*x1
	o10, o11 := y1*img.Stride+4*x0, y1*img.Stride+4*x1
	mix := func(c int) float32 {
		top := float32(p[o00+c]) + fx*(float32(p[o01+c])-float32(p[o00+c]))
		bot := float32(p[o10+c]) + fx*(float32(p[o11+c])-float32(p[o10+c]))
		return top + fy*(bot-top)
	}
	return mix(0), mix(1), mix(2)
}

// fill writes crop c of img, scaled to recHeight×c.rw and normalised to
// (v/255−0.5)/0.5 in B, G, R planes, into dst: one 3×recHeight×stride batch
// item whose columns past c.rw stay 0 (PaddleOCR's zero padding).
//
// The box maps to the crop as PaddleOCR's perspective warp does (corner 0
// at the crop's origin, corners 1 and 3 at its width and height); the crop
// is sampled bilinearly and, where it shrinks, averaged over up to
// maxSuper² samples per pixel, in one pass instead of a warp then a resize.
func fill(dst []float32, stride int, img *image.RGBA, c crop) {
	plane := recHeight * stride
	kx := min(max(int(math.Ceil(float64(c.w)/float64(c.rw))), 1), maxSuper)
	ky := min(max(int(math.Ceil(float64(c.h)/recHeight)), 1), maxSuper)
	inv := 1 / float32(kx*ky)
	q := c.q
	fw, fh := float64(c.w), float64(c.h)
	for i := range recHeight {
		for j := range c.rw {
			var sr, sg, sb float32
			for a := range ky {
				yc := (float64(i)+(float64(a)+0.5)/float64(ky))*fh/recHeight - 0.5
				t := yc / fh
				left, right := q[0].lerp(q[3], t), q[1].lerp(q[2], t)
				for b := range kx {
					xc := (float64(j)+(float64(b)+0.5)/float64(kx))*fw/float64(c.rw) - 0.5
					p := left.lerp(right, xc/fw)
					r, g, bl := sample(img, p.x, p.y)
					sr, sg, sb = sr+r, sg+g, sb+bl
				}
			}
			o := i*stride + j
			dst[o] = sb*inv/127.5 - 1
			dst[plane+o] = sg*inv/127.5 - 1
			dst[2*plane+o] = sr*inv/127.5 - 1
		}
	}
}

// batchWidth is the width a batch of crops is padded to: the widest crop,
// at least recMinWidth.
func batchWidth(cs []crop) int {
	w := recMinWidth
	for _, c := range cs {
		w = max(w, c.rw)
	}
	return w
}

// recInput builds the recogniser's n×3×recHeight×width input for cs.
func recInput(img *image.RGBA, cs []crop) (data []float32, width int) {
	width = batchWidth(cs)
	item := 3 * recHeight * width
	data = make([]float32, len(cs)*item)
	for k, c := range cs {
		fill(data[k*item:(k+1)*item], width, img, c)
	}
	return data, width
}

// ctcDecode is PaddleOCR's CTCLabelDecode on one item of the recogniser's
// output (t steps × len(keys) class probabilities): the most probable class
// at each step, repeats merged, blanks dropped. The confidence is the mean
// probability of the characters kept, 0 when none is.
func ctcDecode(probs []float32, t int, keys []string) (string, float64) {
	c := len(keys)
	var sb strings.Builder
	var sum float64
	n := 0
	prev := -1
	for s := range t {
		row := probs[s*c : (s+1)*c]
		best := 0
		for k := 1; k < c; k++ {
			if row[k] > row[best] {
				best = k
			}
		}
		if best != 0 && best != prev {
			sb.WriteString(keys[best])
			sum += float64(row[best])
			n++
		}
		prev = best
	}
	if n == 0 {
		return "", 0
	}
	return sb.String(), sum / float64(n)
}

// batches splits crops, sorted by scaled width so that each batch pads
// little, into runs whose padded width (crops × batchWidth) is at most
// budget pixels, at least one crop a run; all crops in one run when budget
// is negative.
func batches(cs []crop, budget int) [][]crop {
	slices.SortStableFunc(cs, func(a, b crop) int { return a.rw - b.rw })
	if budget < 0 {
		return [][]crop{cs}
	}
	var out [][]crop
	for len(cs) > 0 {
		n := 1
		for n < len(cs) && (n+1)*batchWidth(cs[n:n+1]) <= budget {
			n++
		}
		out = append(out, cs[:n])
		cs = cs[n:]
	}
	return out
}
