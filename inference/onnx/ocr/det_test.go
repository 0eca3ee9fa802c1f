package ocr

import (
	"math"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestDetSize(t *testing.T) {
	for _, c := range []struct{ w, h, max, dw, dh int }{
		{384, 191, 960, 384, 192},
		{369, 142, 960, 384, 128},
		{1920, 1080, 960, 960, 544}, // 960×540 → 544
		{4000, 1000, 960, 960, 256}, // 960×240 → 256
		{10, 10, 960, 32, 32},       // at least 32
		{1, 5000, 960, 32, 960},     // 0.19 px wide → 32
		{2000, 2000, 500, 512, 512}, // 500 rounds to 512
		{961, 100, 960, 960, 96},    // 99.9 → int 99 → 96
	} {
		dw, dh := detSize(c.w, c.h, c.max)
		if dw != c.dw || dh != c.dh {
			t.Errorf("detSize(%d, %d, %d) = %d×%d, want %d×%d", c.w, c.h, c.max, dw, dh, c.dw, c.dh)
		}
	}
}

// bitmap builds a probability map from rows of '#' (1) and '.' (0).
func bitmap(rows ...string) ([]float32, int, int) {
	w, h := len(rows[0]), len(rows)
	p := make([]float32, w*h)
	for y, r := range rows {
		for x, c := range r {
			if c == '#' {
				p[y*w+x] = 1
			}
		}
	}
	return p, w, h
}

func TestComponents(t *testing.T) {
	p, w, h := bitmap(
		"##....#..",
		".#...#...", // touches the run above diagonally: one component
		"....#....",
		"#.......#",
		"#..###..#",
	)
	cs := components(p, w, h)
	var sizes []int
	for _, c := range cs {
		sizes = append(sizes, len(c))
	}
	// Components in raster order of their first pixel, each as run end points:
	// {(0,0),(1,0),(1,1)}, {(6,0),(5,1),(4,2)}, {(0,3),(0,4)}, {(8,3),(8,4)}, {(3,4),(5,4)}.
	if want := []int{3, 3, 2, 2, 2}; !slices.Equal(sizes, want) {
		t.Fatalf("component sizes %v, want %v: %v", sizes, want, cs)
	}
	if cs[4][0] != (point{3, 4}) || cs[4][1] != (point{5, 4}) {
		t.Errorf("last component %v, want the run 3..5 of row 4", cs[4])
	}
	// A U shape is one component even though its arms only meet at the bottom.
	p, w, h = bitmap(
		"#...#",
		"#...#",
		"#####",
	)
	if cs := components(p, w, h); len(cs) != 1 {
		t.Errorf("U shape: %d components", len(cs))
	}
}

func TestHull(t *testing.T) {
	pts := []point{{0, 0}, {4, 0}, {4, 4}, {0, 4}, {2, 2}, {2, 0}, {1, 3}, {4, 2}}
	h := hull(pts)
	if len(h) != 4 {
		t.Fatalf("hull %v, want the 4 corners", h)
	}
	for _, c := range []point{{0, 0}, {4, 0}, {4, 4}, {0, 4}} {
		if !slices.Contains(h, c) {
			t.Errorf("hull %v lacks %v", h, c)
		}
	}
	if h := hull([]point{{1, 1}, {2, 2}, {3, 3}}); len(h) != 2 {
		t.Errorf("collinear hull %v, want its 2 ends", h)
	}
}

// TestMinAreaRect fills rotated rectangles of known size, takes their
// components and checks the rectangle found.
func TestMinAreaRect(t *testing.T) {
	for _, c := range []struct{ deg, w, h float64 }{{0, 80, 12}, {7, 120, 16}, {-15, 60, 20}, {30, 90, 10}, {80, 40, 8}} {
		const W, H = 200, 200
		p := make([]float32, W*H)
		a := c.deg * math.Pi / 180
		u := point{math.Cos(a), -math.Sin(a)} // counter-clockwise on screen
		v := u.perp()
		ctr := point{100, 100}
		for y := range H {
			for x := range W {
				d := point{float64(x), float64(y)}.sub(ctr)
				if math.Abs(d.dot(u)) <= c.w/2 && math.Abs(d.dot(v)) <= c.h/2 {
					p[y*W+x] = 1
				}
			}
		}
		cs := components(p, W, H)
		if len(cs) != 1 {
			t.Fatalf("%v: %d components", c, len(cs))
		}
		r := minAreaRect(hull(cs[0]))
		long, short := 2*max(r.a, r.b), 2*min(r.a, r.b)
		if math.Abs(long-c.w) > 2 || math.Abs(short-c.h) > 2 || r.c.dist(ctr) > 1 {
			t.Errorf("%v: rect %+v (%.1f×%.1f)", c, r, long, short)
		}
		// u is the axis nearest horizontal, pointing right.
		if r.u.x <= 0 || math.Abs(r.u.y) > math.Abs(r.u.x) {
			t.Errorf("%v: axis %v", c, r.u)
		}
		if got := meanScore(p, W, H, r); got < 0.85 {
			t.Errorf("%v: mean score %.3f inside the rectangle", c, got)
		}
	}
	if r := minAreaRect([]point{{3, 4}}); r.a != 0 || r.b != 0 {
		t.Errorf("one point: %+v", r)
	}
}

// TestBoxes runs the post-processing on a synthetic map with two text
// lines, a weak blob and specks, at half the image's resolution.
func TestBoxes(t *testing.T) {
	const w, h = 100, 40
	p := make([]float32, w*h)
	fill := func(x0, y0, x1, y1 int, v float32) {
		for y := y0; y <= y1; y++ {
			for x := x0; x <= x1; x++ {
				p[y*w+x] = v
			}
		}
	}
	fill(10, 5, 59, 9, 0.9)  // line 1: 50×5
	fill(70, 6, 89, 10, 0.8) // same row, to its right
	fill(10, 25, 49, 29, 0.9)
	fill(60, 25, 79, 29, 0.4) // above detThresh, below boxThresh: dropped
	fill(3, 35, 4, 36, 1)     // speck: dropped
	qs := boxes(p, w, h, 2*w, 2*h, detParams{boxThresh: 0.5, maxBoxes: 10})
	if len(qs) != 3 {
		t.Fatalf("%d boxes: %v", len(qs), qs)
	}
	// Line 1: rect 49×4 (pixel centres), grown by 49·4·1.5/(2·53) = 2.77 per
	// side, scaled by 2: x 10−2.77..59+2.77 → 14.45..123.55, y 5−2.77..9+2.77 → 4.45..23.55.
	want := quad{{14, 4}, {124, 4}, {124, 24}, {14, 24}}
	if d := quadDist(qs[0], want); d != 0 {
		t.Errorf("box 0 %v, want %v", qs[0], want)
	}
	if qs[1][0].x < qs[0][1].x || qs[2][0].y < qs[0][3].y {
		t.Errorf("not in reading order: %v", qs)
	}
	if qs := boxes(p, w, h, 2*w, 2*h, detParams{boxThresh: 0.5, maxBoxes: 2}); len(qs) != 2 || qs[1][0].y > 20 {
		t.Errorf("maxBoxes 2 keeps %v, want the first row", qs)
	}
	if qs := boxes(make([]float32, w*h), w, h, w, h, detParams{boxThresh: 0.5, maxBoxes: 10}); len(qs) != 0 {
		t.Errorf("empty map gives %v", qs)
	}
}

func quadDist(a, b quad) float64 {
	d := 0.0
	for i := range a {
		d = max(d, a[i].dist(b[i]))
	}
	return d
}

func TestClockwise(t *testing.T) {
	want := quad{{10, 10}, {50, 12}, {49, 30}, {9, 28}}
	for i := range 4 {
		var q quad
		for k := range 4 {
			q[k] = want[(k+i)%4]
		}
		q[1], q[3] = q[3], q[1]
		if got := clockwise(q); got != want {
			t.Errorf("clockwise(%v) = %v, want %v", q, got, want)
		}
	}
}

func TestSortBoxes(t *testing.T) {
	box := func(x, y, w, h float64) quad {
		return quad{{x, y}, {x + w, y}, {x + w, y + h}, {x, y + h}}
	}
	// Two rows; in the first the right box sits 4 px higher than the left.
	qs := []quad{box(200, 100, 80, 30), box(10, 96, 150, 30), box(300, 5, 50, 30), box(10, 10, 100, 30)}
	sortBoxes(qs)
	var xs []float64
	for _, q := range qs {
		xs = append(xs, q[0].x)
	}
	// Row 1: (10,10) and (300,5), 5 px apart; row 2: (10,96) and (200,100).
	want := []float64{10, 300, 10, 200}
	if !slices.Equal(xs, want) {
		t.Errorf("order by x %v, want %v", xs, want)
	}
	// Tall boxes (large images) use half the box height as the row tolerance.
	qs = []quad{box(10, 130, 100, 80), box(500, 100, 100, 80)}
	sortBoxes(qs)
	if qs[0][0].x != 10 {
		t.Errorf("tall boxes 30 px apart in y not one row: %v", qs)
	}
}

func TestNewCrop(t *testing.T) {
	c := newCrop(quad{{10, 10}, {110, 10}, {110, 30}, {10, 30}}, 0, 1600)
	if c.w != 100 || c.h != 20 || c.rw != 240 {
		t.Errorf("horizontal crop %+v", c)
	}
	c = newCrop(quad{{10, 10}, {30, 10}, {30, 110}, {10, 110}}, 0, 1600)
	if c.w != 100 || c.h != 20 || c.q[0] != (point{30, 10}) {
		t.Errorf("vertical crop %+v, want it turned with the top-right corner first", c)
	}
	if c := newCrop(quad{{0, 0}, {5000, 0}, {5000, 10}, {0, 10}}, 0, 1600); c.rw != 1600 {
		t.Errorf("long crop width %d, want the cap", c.rw)
	}
}

func TestCTCDecode(t *testing.T) {
	keys := []string{"", "a", "b", " "}
	// Steps: a a blank a b b space.
	steps := [][]float32{{0, .9, .1, 0}, {0, .8, .2, 0}, {1, 0, 0, 0}, {.4, .6, 0, 0}, {0, 0, .7, .3}, {0, 0, .5, .1}, {0, 0, 0, 1}}
	var probs []float32
	for _, s := range steps {
		probs = append(probs, s...)
	}
	text, conf := ctcDecode(probs, len(steps), keys)
	if text != "aab " {
		t.Errorf("text %q, want %q", text, "aab ")
	}
	if want := (0.9 + 0.6 + 0.7 + 1) / 4; math.Abs(conf-want) > 1e-6 {
		t.Errorf("confidence %v, want %v", conf, want)
	}
	if text, conf := ctcDecode(make([]float32, 8), 2, keys); text != "" || conf != 0 {
		t.Errorf("all blank: %q %v", text, conf)
	}
}

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/keys.txt"
	if err := os.WriteFile(path, []byte("a\r\nb\n'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, _, err := loadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"", "a", "b", "'", " "}; !slices.Equal(keys, want) {
		t.Errorf("keys %q, want %q", keys, want)
	}
	if _, _, err := loadKeys(dir + "/none"); err == nil {
		t.Error("missing file accepted")
	}
	if err := os.WriteFile(path, []byte("\xff\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadKeys(path); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("non-UTF-8 dictionary: %v", err)
	}
}

func TestBatches(t *testing.T) {
	widths := []int{2000, 310, 500, 100, 1300, 330, 300, 700, 200}
	var cs []crop
	for i, w := range widths {
		cs = append(cs, crop{rw: w, index: i})
	}
	var got [][]int
	seen := map[int]bool{}
	for _, b := range batches(slices.Clone(cs), 1280) {
		var ws []int
		for _, c := range b {
			ws = append(ws, c.rw)
			seen[c.index] = true
		}
		got = append(got, ws)
	}
	// Four short lines pad to 4×320 = 1280; 330 and 500 pad to 2×500; the
	// rest run alone.
	want := [][]int{{100, 200, 300, 310}, {330, 500}, {700}, {1300}, {2000}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches %v, want %v", got, want)
	}
	if len(seen) != len(cs) {
		t.Errorf("lost crops: %v", seen)
	}
	if bs := batches(slices.Clone(cs), -1); len(bs) != 1 || len(bs[0]) != len(cs) {
		t.Errorf("one batch: %d", len(bs))
	}
}
