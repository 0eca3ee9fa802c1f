package detect

import (
	"math"
	"testing"
)

func TestExpectation(t *testing.T) {
	uniform := make([]float32, Bins)
	if got := expectation(uniform); math.Abs(float64(got)-5) > 1e-5 {
		t.Errorf("uniform: %v, want 5", got)
	}
	for k := range Bins {
		peak := make([]float32, Bins)
		peak[k] = 30
		if got := expectation(peak); math.Abs(float64(got)-float64(k)) > 1e-4 {
			t.Errorf("peak at %d: %v", k, got)
		}
	}
	// Large logits do not overflow.
	big := []float32{1e30, 1e30, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if got := expectation(big); math.Abs(float64(got)-0.5) > 1e-5 {
		t.Errorf("huge logits: %v", got)
	}
}

func TestIoU(t *testing.T) {
	for _, tc := range []struct {
		a, b [4]float32
		want float32
	}{
		{[4]float32{0, 0, 10, 10}, [4]float32{0, 0, 10, 10}, 1},
		{[4]float32{0, 0, 10, 10}, [4]float32{5, 0, 15, 10}, 50.0 / 150},
		{[4]float32{0, 0, 10, 10}, [4]float32{10, 0, 20, 10}, 0}, // touching
		{[4]float32{0, 0, 10, 10}, [4]float32{2, 2, 4, 4}, 4.0 / 100},
		{[4]float32{0, 0, 0, 0}, [4]float32{0, 0, 0, 0}, 0}, // empty
	} {
		if got := IoU(tc.a, tc.b); math.Abs(float64(got-tc.want)) > 1e-6 {
			t.Errorf("IoU(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if IoU(tc.a, tc.b) != IoU(tc.b, tc.a) {
			t.Errorf("IoU(%v, %v) not symmetric", tc.a, tc.b)
		}
	}
}

// emptyRaw is the outputs of an image with nothing in it.
func emptyRaw() *raw {
	r := &raw{}
	for l := range Strides {
		r.scores[l] = make([]float32, cells(l)*NumClasses)
		r.dist[l] = make([]float32, cells(l)*distLen)
	}
	return r
}

// put sets, at level l, cell (x, y), the score of class and each side's
// distance to `bins` strides.
func put(r *raw, l, x, y, class int, score float32, bins int) {
	pos := y*(InputSize/Strides[l]) + x
	r.scores[l][pos*NumClasses+class] = score
	for side := range 4 {
		for k := range Bins {
			v := float32(0)
			if k == bins {
				v = 40
			}
			r.dist[l][pos*distLen+side*Bins+k] = v
		}
	}
}

func TestPostprocess(t *testing.T) {
	r := emptyRaw()
	put(r, 0, 10, 20, 16, 0.9, 4) // a dog centred at (84, 164), 64x64: (52,132)-(116,196)
	put(r, 0, 11, 20, 16, 0.8, 4) // the same dog one cell over: IoU 0.78, suppressed
	put(r, 0, 10, 20, 15, 0.7, 4) // a cat in the dog's box: another class, kept
	put(r, 2, 0, 0, 0, 0.3, 1)    // a person under the threshold
	put(r, 2, 12, 12, 2, 0.6, 10) // a car in the bottom right corner of level 2, clamped
	lb := newLetterbox(InputSize, InputSize)
	got := postprocess(r, DefaultParams, &lb)
	want := []Detection{
		{"dog", 16, 0.9, Box{52, 132, 116, 196}},
		{"cat", 15, 0.7, Box{52, 132, 116, 196}},
		{"car", 2, 0.6, Box{400 - 320, 400 - 320, 416, 416}},
	}
	if !sameDetections(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	p := DefaultParams
	p.MaxDetections = 1
	if got := postprocess(r, p, &lb); len(got) != 1 || got[0].Label != "dog" {
		t.Errorf("max 1: %v", got)
	}
	p = DefaultParams
	p.IoUThreshold = 0.8
	if got := postprocess(r, p, &lb); len(got) != 4 {
		t.Errorf("IoU 0.8 keeps the second dog: %v", got)
	}

	// A 2000x1000 image: the content is 416x208 at y 104, scale 0.208.
	lb = newLetterbox(2000, 1000)
	got = postprocess(r, DefaultParams, &lb)
	if b := got[0].Box; math.Abs(b.X1-52/0.208) > 0.1 || math.Abs(b.Y1-(132-104)/0.208) > 0.1 || math.Abs(b.X2-116/0.208) > 0.1 || math.Abs(b.Y2-(196-104)/0.208) > 0.1 {
		t.Errorf("mapped box %+v", b)
	}
	if b := got[2].Box; b.X2 != 2000 || b.Y2 != 1000 {
		t.Errorf("car box %+v not clamped to the image", b)
	}
}

// TestPostprocessNothing: an empty image gives an empty, non-nil list; a
// box entirely in the letterbox margin is dropped.
func TestPostprocessNothing(t *testing.T) {
	r := emptyRaw()
	lb := newLetterbox(416, 100) // content at y 158..258
	if got := postprocess(r, DefaultParams, &lb); got == nil || len(got) != 0 {
		t.Errorf("empty: %#v", got)
	}
	put(r, 0, 10, 2, 0, 0.9, 1) // y 12..28: in the top margin
	if got := postprocess(r, DefaultParams, &lb); len(got) != 0 {
		t.Errorf("margin box kept: %v", got)
	}
}

// TestPostprocessCap: more candidates than preNMS keeps the best preNMS.
func TestPostprocessCap(t *testing.T) {
	r := emptyRaw()
	for i := range cells(0) {
		r.scores[0][i*NumClasses] = 0.5 + float32(i)/float32(4*cells(0))
		r.scores[0][i*NumClasses+1] = 0.5
	}
	lb := newLetterbox(InputSize, InputSize)
	p := DefaultParams
	p.MaxDetections = MaxMaxDetections
	got := postprocess(r, p, &lb)
	if len(got) == 0 || got[0].ClassID != 0 || got[0].Score < 0.74 {
		t.Errorf("best: %v", got[:min(len(got), 3)])
	}
	for _, d := range got {
		if d.ClassID != 0 {
			t.Fatalf("a class 1 box (score 0.5) passed the cut of the best %d: %+v", preNMS, d)
		}
	}
}
