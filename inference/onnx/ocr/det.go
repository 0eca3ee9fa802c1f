package ocr

import (
	"image"
	"math"
	"slices"

	"golang.org/x/image/draw"
)

// Detection constants, PaddleOCR's DBPostProcess defaults for PP-OCRv4.
const (
	detThresh      = 0.3  // probability above which a pixel is text
	unclipRatio    = 1.5  // box growth: offset = area·ratio/perimeter
	minBoxSide     = 3    // shorter side below which a box is noise, in map pixels
	maxCandidates  = 1000 // text regions considered per image
	sameLinePixels = 10   // PaddleOCR's row tolerance when sorting boxes
)

// The detector's input normalisation, per channel in the order the
// channels are fed (B, G, R): PaddleOCR reads images with OpenCV (BGR) and
// applies ImageNet's mean and std, listed in RGB order, to them unchanged.
var (
	detMean = [3]float32{0.485, 0.456, 0.406}
	detStd  = [3]float32{0.229, 0.224, 0.225}
)

// detSize is the detector's input size for a w×h image: scaled so the long
// side is at most maxSide, then each side rounded to a multiple of 32 (at
// least 32), as PaddleOCR's DetResizeForTest with limit_type "max".
func detSize(w, h, maxSide int) (dw, dh int) {
	ratio := 1.0
	if m := max(w, h); m > maxSide {
		ratio = float64(maxSide) / float64(m)
	}
	round32 := func(n int) int {
		return max(int(math.Round(float64(int(float64(n)*ratio))/32))*32, 32)
	}
	return round32(w), round32(h)
}

// detInput resizes img to the detector's input size and returns it as a
// normalised 1×3×h×w BGR tensor's data. The resize interpolates the 2×2
// pixels around each sample without widening the filter when shrinking,
// as OpenCV's INTER_LINEAR in PaddleOCR does (and 8 times faster than
// x/image's anti-aliased BiLinear on a 4-megapixel photo).
func detInput(img *image.RGBA, maxSide int) (data []float32, w, h int) {
	b := img.Bounds()
	w, h = detSize(b.Dx(), b.Dy(), maxSide)
	src := img
	if w != b.Dx() || h != b.Dy() {
		src = image.NewRGBA(image.Rect(0, 0, w, h))
		draw.ApproxBiLinear.Scale(src, src.Bounds(), img, b, draw.Src, nil)
	}
	var lut [3][256]float32
	for c := range 3 {
		for v := range 256 {
			lut[c][v] = (float32(v)/255 - detMean[c]) / detStd[c]
		}
	}
	n := w * h
	data = make([]float32, 3*n)
	for y := range h {
		row := src.Pix[y*src.Stride : y*src.Stride+4*w]
		o := y * w
		for x := range w {
			p := row[4*x : 4*x+3 : 4*x+3]
			data[o+x] = lut[0][p[2]]     // B
			data[n+o+x] = lut[1][p[1]]   // G
			data[2*n+o+x] = lut[2][p[0]] // R
		}
	}
	return data, w, h
}

// point is a position in pixel coordinates (pixel centres at integers).
type point struct{ x, y float64 }

func (p point) add(q point) point             { return point{p.x + q.x, p.y + q.y} }
func (p point) sub(q point) point             { return point{p.x - q.x, p.y - q.y} }
func (p point) scale(k float64) point         { return point{p.x * k, p.y * k} }
func (p point) dot(q point) float64           { return p.x*q.x + p.y*q.y }
func (p point) cross(q point) float64         { return p.x*q.y - p.y*q.x }
func (p point) dist(q point) float64          { return math.Hypot(p.x-q.x, p.y-q.y) }
func (p point) perp() point                   { return point{-p.y, p.x} }
func (p point) lerp(q point, t float64) point { return p.add(q.sub(p).scale(t)) }

// quad is a text box: top-left, top-right, bottom-right, bottom-left.
type quad [4]point

// rect is a rotated rectangle: centre c, unit axis u, half extents a along
// u and b along u's perpendicular.
type rect struct {
	c    point
	u    point
	a, b float64
}

func (r rect) corners() quad {
	v := r.u.perp()
	ua, vb := r.u.scale(r.a), v.scale(r.b)
	return quad{
		r.c.sub(ua).sub(vb), r.c.add(ua).sub(vb),
		r.c.add(ua).add(vb), r.c.sub(ua).add(vb),
	}
}

// run is a horizontal run of text pixels in row y, x0..x1 inclusive.
type run struct{ y, x0, x1 int32 }

// components returns the 8-connected components of the pixels of prob
// above detThresh, each as the end points of its runs: the convex hull of
// those is the hull of the component. Components come in the order of
// their first pixel in raster order.
func components(prob []float32, w, h int) [][]point {
	var runs []run
	var parent []int32
	find := func(i int32) int32 {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	prevStart, prevEnd := 0, 0 // runs of the previous row: runs[prevStart:prevEnd]
	for y := range h {
		row := prob[y*w : (y+1)*w]
		start := len(runs)
		k := prevStart
		for x := 0; x < w; {
			if row[x] <= detThresh {
				x++
				continue
			}
			x0 := x
			for x < w && row[x] > detThresh {
				x++
			}
			r := run{int32(y), int32(x0), int32(x - 1)}
			id := int32(len(runs))
			runs = append(runs, r)
			parent = append(parent, id)
			// Runs of the row above that touch r, diagonals included.
			for k < prevEnd && runs[k].x1 < r.x0-1 {
				k++
			}
			for j := k; j < prevEnd && runs[j].x0 <= r.x1+1; j++ {
				a, b := find(id), find(int32(j))
				if a != b {
					parent[max(a, b)] = min(a, b)
				}
			}
		}
		prevStart, prevEnd = start, len(runs)
	}
	index := make(map[int32]int)
	var comps [][]point
	for i, r := range runs {
		root := find(int32(i))
		ci, ok := index[root]
		if !ok {
			ci = len(comps)
			index[root] = ci
			comps = append(comps, nil)
		}
		comps[ci] = append(comps[ci], point{float64(r.x0), float64(r.y)})
		if r.x1 != r.x0 {
			comps[ci] = append(comps[ci], point{float64(r.x1), float64(r.y)})
		}
	}
	return comps
}

// hull returns the convex hull of pts counter-clockwise (in a y-down frame,
// clockwise on screen), without collinear points. pts is reordered.
func hull(pts []point) []point {
	slices.SortFunc(pts, func(p, q point) int {
		if p.x != q.x {
			if p.x < q.x {
				return -1
			}
			return 1
		}
		switch {
		case p.y < q.y:
			return -1
		case p.y > q.y:
			return 1
		}
		return 0
	})
	pts = slices.Compact(pts)
	if len(pts) < 3 {
		return pts
	}
	h := make([]point, 0, 2*len(pts))
	for _, p := range pts {
		for len(h) >= 2 && h[len(h)-1].sub(h[len(h)-2]).cross(p.sub(h[len(h)-2])) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, p)
	}
	lower := len(h) + 1
	for i := len(pts) - 2; i >= 0; i-- {
		p := pts[i]
		for len(h) >= lower && h[len(h)-1].sub(h[len(h)-2]).cross(p.sub(h[len(h)-2])) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, p)
	}
	return h[:len(h)-1]
}

// minAreaRect returns the smallest-area rectangle enclosing the convex
// polygon hull: one of its sides lies on a hull edge (rotating calipers, by
// trying every edge). A hull of fewer than 3 points gives a rectangle of
// zero width.
func minAreaRect(hull []point) rect {
	switch len(hull) {
	case 0:
		return rect{u: point{1, 0}}
	case 1:
		return rect{c: hull[0], u: point{1, 0}}
	}
	best, bestArea := rect{}, math.Inf(1)
	for i := range hull {
		e := hull[(i+1)%len(hull)].sub(hull[i])
		l := math.Hypot(e.x, e.y)
		if l == 0 {
			continue
		}
		u := e.scale(1 / l)
		v := u.perp()
		minU, maxU, minV, maxV := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
		for _, p := range hull {
			pu, pv := p.dot(u), p.dot(v)
			minU, maxU = min(minU, pu), max(maxU, pu)
			minV, maxV = min(minV, pv), max(maxV, pv)
		}
		if area := (maxU - minU) * (maxV - minV); area < bestArea {
			bestArea = area
			c := u.scale((minU + maxU) / 2).add(v.scale((minV + maxV) / 2))
			best = rect{c: c, u: u, a: (maxU - minU) / 2, b: (maxV - minV) / 2}
		}
	}
	// Make u the axis closest to horizontal, pointing right, so that the
	// rectangle's "width" runs along the text.
	if math.Abs(best.u.y) > math.Abs(best.u.x) {
		best.u = best.u.perp()
		best.a, best.b = best.b, best.a
	}
	if best.u.x < 0 {
		best.u = best.u.scale(-1)
	}
	return best
}

// meanScore is the mean probability of the pixels of prob (w×h) whose
// centres lie within r, grown by half a pixel so that the edge pixels
// count, as OpenCV's fillPoly mask does in PaddleOCR's box_score_fast.
func meanScore(prob []float32, w, h int, r rect) float64 {
	q := r.corners()
	x0, x1 := math.Inf(1), math.Inf(-1)
	y0, y1 := math.Inf(1), math.Inf(-1)
	for _, p := range q {
		x0, x1 = min(x0, p.x), max(x1, p.x)
		y0, y1 = min(y0, p.y), max(y1, p.y)
	}
	xa, xb := max(int(math.Floor(x0)), 0), min(int(math.Ceil(x1)), w-1)
	ya, yb := max(int(math.Floor(y0)), 0), min(int(math.Ceil(y1)), h-1)
	v := r.u.perp()
	var sum float64
	n := 0
	for y := ya; y <= yb; y++ {
		for x := xa; x <= xb; x++ {
			d := point{float64(x), float64(y)}.sub(r.c)
			if math.Abs(d.dot(r.u)) <= r.a+0.5 && math.Abs(d.dot(v)) <= r.b+0.5 {
				sum += float64(prob[y*w+x])
				n++
			}
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// detParams are the knobs of box extraction.
type detParams struct {
	boxThresh float64 // least mean probability of a box
	maxBoxes  int     // most boxes returned (the first in reading order)
}

// boxes turns the detector's probability map (w×h) into text boxes in the
// coordinates of the original imgW×imgH image, in reading order. It follows
// PaddleOCR's DBPostProcess (box_type "quad", score_mode "fast") with
// rotated minimum-area rectangles: threshold, connected components, the
// smallest rotated rectangle around each, its mean probability, growth by
// area·1.5/perimeter on every side (what pyclipper's round offset of a
// rectangle amounts to once its minimum-area rectangle is taken again),
// scaled back and rounded to whole pixels.
func boxes(prob []float32, w, h, imgW, imgH int, p detParams) []quad {
	sx, sy := float64(imgW)/float64(w), float64(imgH)/float64(h)
	var out []quad
	n := 0
	for _, pts := range components(prob, w, h) {
		if n >= maxCandidates {
			break
		}
		r := minAreaRect(hull(pts))
		if 2*min(r.a, r.b) < minBoxSide {
			continue
		}
		n++
		if meanScore(prob, w, h, r) < p.boxThresh {
			continue
		}
		d := (2 * r.a) * (2 * r.b) * unclipRatio / (2 * (2*r.a + 2*r.b))
		r.a += d
		r.b += d
		if 2*min(r.a, r.b) < minBoxSide+2 {
			continue
		}
		var q quad
		for i, c := range r.corners() {
			q[i] = point{
				math.Round(clamp(c.x*sx, 0, float64(imgW-1))),
				math.Round(clamp(c.y*sy, 0, float64(imgH-1))),
			}
		}
		q = clockwise(q)
		if int(q[0].dist(q[1])) <= minBoxSide || int(q[0].dist(q[3])) <= minBoxSide {
			continue
		}
		out = append(out, q)
	}
	sortBoxes(out)
	if len(out) > p.maxBoxes {
		out = out[:p.maxBoxes]
	}
	return out
}

func clamp(v, lo, hi float64) float64 { return min(max(v, lo), hi) }

// clockwise orders the corners of q as PaddleOCR's order_points_clockwise:
// top-left has the least x+y, bottom-right the greatest, and of the other
// two top-right has the least y−x.
func clockwise(q quad) quad {
	imin, imax := 0, 0
	for i, p := range q {
		if p.x+p.y < q[imin].x+q[imin].y {
			imin = i
		}
		if p.x+p.y > q[imax].x+q[imax].y {
			imax = i
		}
	}
	if imin == imax {
		return q
	}
	var rest []point
	for i, p := range q {
		if i != imin && i != imax {
			rest = append(rest, p)
		}
	}
	tr, bl := rest[0], rest[1]
	if tr.y-tr.x > bl.y-bl.x {
		tr, bl = bl, tr
	}
	return quad{q[imin], tr, q[imax], bl}
}

// sameRow reports whether box b continues the row of box a: their top-left
// corners are within PaddleOCR's 10 pixels of each other vertically, or
// within half the height of the shorter box (so that the rule scales with
// large images).
func sameRow(a, b quad) bool {
	tol := max(sameLinePixels, 0.5*min(a[0].dist(a[3]), b[0].dist(b[3])))
	return math.Abs(a[0].y-b[0].y) < tol
}

// sortBoxes puts boxes in reading order as PaddleOCR's sorted_boxes: by the
// top-left corner's y then x, then boxes of the same row left to right.
func sortBoxes(qs []quad) {
	slices.SortStableFunc(qs, func(a, b quad) int {
		switch {
		case a[0].y != b[0].y:
			if a[0].y < b[0].y {
				return -1
			}
			return 1
		case a[0].x < b[0].x:
			return -1
		case a[0].x > b[0].x:
			return 1
		}
		return 0
	})
	for i := 0; i+1 < len(qs); i++ {
		for j := i; j >= 0; j-- {
			if sameRow(qs[j], qs[j+1]) && qs[j+1][0].x < qs[j][0].x {
				qs[j], qs[j+1] = qs[j+1], qs[j]
			} else {
				break
			}
		}
	}
}
