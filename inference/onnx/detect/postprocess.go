package detect

import (
	"math"
	"slices"
)

// The head's layout, as the converted graph outputs it (see
// scripts/nanodet2onnx.py): per stride, a grid of InputSize/stride cells,
// row-major; per cell NumClasses sigmoid scores and 4 × Bins logits for the
// distances from the cell centre to the left, top, right and bottom sides,
// in units of the stride.
const (
	// NumClasses is the number of COCO classes.
	NumClasses = 80
	// Bins is the number of distance bins per side (reg_max + 1).
	Bins    = 11
	distLen = 4 * Bins
	// preNMS is the most candidates (by score) that go into NMS.
	preNMS = 1000
)

// Strides are the feature strides of the three levels, in input pixels.
var Strides = [3]int{8, 16, 32}

// outputNames are the session outputs: scores then distributions, per stride.
var outputNames = []string{"scores_8", "scores_16", "scores_32", "dist_8", "dist_16", "dist_32"}

// raw is one image's share of the network outputs.
type raw struct {
	scores [3][]float32 // cells × NumClasses per level
	dist   [3][]float32 // cells × distLen per level
}

// cells is the number of grid cells of level l.
func cells(l int) int { g := InputSize / Strides[l]; return g * g }

type candidate struct {
	score      float32
	class      int
	box        [4]float32 // x1, y1, x2, y2 in input pixels
	level, pos int
}

// postprocess turns one image's outputs into detections in image pixels:
// candidates at or over the score threshold (every class of every cell),
// the best preNMS of them, per-class greedy NMS, at most MaxDetections.
func postprocess(r *raw, p Params, lb *letterbox) []Detection {
	thr := float32(p.ScoreThreshold)
	var cands []candidate
	for l := range Strides {
		s := r.scores[l]
		for i, v := range s {
			if v >= thr && v <= 1 { // sigmoid scores; anything else is not one
				cands = append(cands, candidate{score: v, class: i % NumClasses, level: l, pos: i / NumClasses})
			}
		}
	}
	slices.SortStableFunc(cands, func(a, b candidate) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		}
		return 0
	})
	if len(cands) > preNMS {
		cands = cands[:preNMS]
	}
	for i := range cands {
		c := &cands[i]
		c.box = decodeBox(r.dist[c.level][c.pos*distLen:(c.pos+1)*distLen], c.level, c.pos)
	}

	dets := []Detection{}
	kept := make([]*candidate, 0, p.MaxDetections)
	iou := float32(p.IoUThreshold)
	for i := range cands {
		c := &cands[i]
		suppressed := false
		for _, k := range kept {
			if k.class == c.class && IoU(k.box, c.box) > iou {
				suppressed = true
				break
			}
		}
		if suppressed {
			continue
		}
		d := Detection{
			Label:   Labels[c.class],
			ClassID: c.class,
			Score:   round(float64(c.score), 1e4),
			Box: Box{
				X1: round(lb.toImageX(c.box[0]), 10),
				Y1: round(lb.toImageY(c.box[1]), 10),
				X2: round(lb.toImageX(c.box[2]), 10),
				Y2: round(lb.toImageY(c.box[3]), 10),
			},
		}
		if !(d.Box.X2 > d.Box.X1 && d.Box.Y2 > d.Box.Y1) {
			continue // all in the letterbox margin (or not a number)
		}
		kept = append(kept, c)
		dets = append(dets, d)
		if len(dets) == p.MaxDetections {
			break
		}
	}
	return dets
}

// decodeBox turns one cell's 4 × Bins logits into a box in input pixels:
// each side's distance is the expectation of its softmax, in strides, from
// the cell centre ((x + 0.5) · stride, (y + 0.5) · stride), clamped to the input.
func decodeBox(logits []float32, level, pos int) [4]float32 {
	stride := float32(Strides[level])
	g := InputSize / Strides[level]
	cx := (float32(pos%g) + 0.5) * stride
	cy := (float32(pos/g) + 0.5) * stride
	var d [4]float32
	for side := range 4 {
		d[side] = expectation(logits[side*Bins:(side+1)*Bins]) * stride
	}
	clamp := func(v float32) float32 { return min(max(v, 0), InputSize) }
	return [4]float32{clamp(cx - d[0]), clamp(cy - d[1]), clamp(cx + d[2]), clamp(cy + d[3])}
}

// expectation is Σ i·softmax(logits)_i.
func expectation(logits []float32) float32 {
	m := logits[0]
	for _, v := range logits[1:] {
		m = max(m, v)
	}
	var sum, acc float64
	for i, v := range logits {
		e := math.Exp(float64(v - m))
		sum += e
		acc += e * float64(i)
	}
	return float32(acc / sum)
}

// IoU is the intersection over union of two boxes (x1, y1, x2, y2); 0 when
// either is empty.
func IoU(a, b [4]float32) float32 {
	iw := min(a[2], b[2]) - max(a[0], b[0])
	ih := min(a[3], b[3]) - max(a[1], b[1])
	if iw <= 0 || ih <= 0 {
		return 0
	}
	inter := iw * ih
	union := (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - inter
	if union <= 0 {
		return 0
	}
	return inter / union
}

// round rounds x to 1/scale.
func round(x, scale float64) float64 { return math.Round(x*scale) / scale }
