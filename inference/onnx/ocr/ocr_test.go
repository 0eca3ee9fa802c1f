package ocr

import (
	"context"
	"encoding/json"
	"image"
	"image/color"
	"math"
	"os"
	"strings"
	"testing"
	"unicode"

	"golang.org/x/image/font"
	"golang.org/x/image/font/opentype"

	"github.com/mqttinfer/mqttinfer/inference"
)

// similarity is 1 − (edit distance)/(longer length), over runes: 1 for
// equal strings, 0 for nothing in common.
func similarity(a, b string) float64 {
	ra, rb := []rune(a), []rune(b)
	if len(ra) == 0 && len(rb) == 0 {
		return 1
	}
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return 1 - float64(prev[len(rb)])/float64(max(len(ra), len(rb)))
}

// squash drops all white space: the recogniser often reads "004521.7 kWh"
// as "004521.7kWh", and the comparison is about the characters.
func squash(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, s)
}

func TestSimilarity(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want float64
	}{
		{"", "", 1}, {"abc", "abc", 1}, {"abc", "", 0}, {"kitten", "sitting", 1 - 3.0/7}, {"12:45", "12.45", 0.8},
	} {
		if got := similarity(c.a, c.b); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("similarity(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// TestMeters renders meter and display readings in DejaVu fonts (dark on
// light and LCD-like light on dark, several sizes, noise, PNG and JPEG) and
// checks the text read, the rows, and that each row's boxes cover where
// the text was drawn.
func TestMeters(t *testing.T) {
	m := model(t)
	cases := []struct {
		name string
		s    scene
		jpeg int // JPEG quality; 0 = PNG
	}{
		{"energy-sans-40", scene{font: "DejaVuSans.ttf", size: 40, lines: []string{"004521.7 kWh"}, fg: black, bg: white}, 0},
		{"energy-mono-24-jpeg-noise", scene{font: "DejaVuSansMono.ttf", size: 24, lines: []string{"004521.7 kWh"}, fg: black, bg: white, noise: 16, seed: 1}, 80},
		{"lcd-voltage-clock", scene{font: "DejaVuSansMono.ttf", size: 32, lines: []string{"L1 230.4V", "12:45"}, fg: lcdFG, bg: lcdBG, noise: 20, seed: 2}, 0},
		{"lcd-small-16", scene{font: "DejaVuSansMono.ttf", size: 16, lines: []string{"L1 230.4V", "12:45"}, fg: lcdFG, bg: lcdBG, noise: 8, seed: 3}, 90},
		{"temperature-bold-jpeg", scene{font: "DejaVuSans-Bold.ttf", size: 48, lines: []string{"TEMP 23.5 C"}, fg: black, bg: color.RGBA{230, 230, 215, 255}, noise: 10, seed: 4}, 70},
		{"water-meter-3-rows", scene{font: "DejaVuSans.ttf", size: 28, lines: []string{"METER 0017283", "TOTAL 3841.26 m3", "FLOW 12.5 L/min"}, fg: black, bg: white, noise: 6, seed: 5}, 0},
		{"big-lcd-digits", scene{font: "DejaVuSansMono-Bold.ttf", size: 96, lines: []string{"0815"}, fg: lcdFG, bg: lcdBG, noise: 24, seed: 6}, 85},
		{"gas-meter-mono-20", scene{font: "DejaVuSansMono.ttf", size: 20, lines: []string{"GAS 00734.512 m3", "ID 4711-0042"}, fg: color.RGBA{20, 20, 60, 255}, bg: color.RGBA{250, 245, 235, 255}, noise: 10, seed: 7}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := render(t, c.s)
			b := encodePNG(t, img)
			if c.jpeg > 0 {
				b = encodeJPEG(t, img, c.jpeg)
			}
			r := infer(t, m, b)
			if r.Width != img.Rect.Dx() || r.Height != img.Rect.Dy() {
				t.Errorf("size %dx%d, want %dx%d", r.Width, r.Height, img.Rect.Dx(), img.Rect.Dy())
			}
			want := strings.Join(c.s.lines, "\n")
			sim := similarity(squash(r.Text), squash(want))
			t.Logf("read %q (similarity %.3f, exact %v)", r.Text, sim, r.Text == want)
			if sim < 0.9 {
				t.Errorf("read %q, want %q: similarity %.3f < 0.9", r.Text, want, sim)
			}
			if got := strings.Count(r.Text, "\n") + 1; got != len(c.s.lines) {
				t.Errorf("%d rows, want %d", got, len(c.s.lines))
			}
			for _, l := range r.Lines {
				if l.Confidence < DefaultMinConfidence || l.Confidence > 1 {
					t.Errorf("line %q has confidence %v", l.Text, l.Confidence)
				}
			}
			checkCover(t, c.s, r)
		})
	}
}

// checkCover checks that the boxes read cover each drawn line of s: the
// union of the boxes overlapping a line's ink box covers at least 80% of it
// (the detector's text regions sit a little below the ink of digits and
// capitals: they make room for descenders) and is not more than 3 times
// its area.
func checkCover(t *testing.T, s scene, r Result) {
	t.Helper()
	face, err := opentype.NewFace(loadFont(t, s.font), &opentype.FaceOptions{Size: s.size, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		t.Fatal(err)
	}
	defer face.Close()
	for i, ink := range inkBoxes(face, s) {
		var u image.Rectangle
		for _, l := range r.Lines {
			if bb := boxBounds(l.Box); bb.Overlaps(ink) {
				u = u.Union(bb)
			}
		}
		in := area(u.Intersect(ink))
		if in < 0.8*area(ink) || area(u) > 3*area(ink) {
			t.Errorf("line %d %q drawn at %v, boxes cover %v", i, s.lines[i], ink, u)
		}
	}
}

func area(r image.Rectangle) float64 { return float64(r.Dx() * r.Dy()) }

func boxBounds(b [4][2]int) image.Rectangle {
	r := image.Rect(b[0][0], b[0][1], b[0][0]+1, b[0][1]+1)
	for _, p := range b[1:] {
		r = r.Union(image.Rect(p[0], p[1], p[0]+1, p[1]+1))
	}
	return r
}

// inkBoxes are the bounds of each line of s as render draws it.
func inkBoxes(face font.Face, s scene) []image.Rectangle {
	m := face.Metrics()
	lineH := (m.Height * 13 / 10).Ceil()
	margin := int(s.size)
	var out []image.Rectangle
	for i, l := range s.lines {
		b, _ := font.BoundString(face, l)
		x0, y0 := margin, margin+i*lineH+m.Ascent.Ceil()
		out = append(out, image.Rect(x0+b.Min.X.Floor(), y0+b.Min.Y.Floor(), x0+b.Max.X.Ceil(), y0+b.Max.Y.Ceil()))
	}
	return out
}

// rotate turns img by deg degrees counter-clockwise about its centre onto
// a canvas large enough to hold it, filled with bg.
func rotate(img *image.RGBA, deg float64, bg color.RGBA) *image.RGBA {
	a := deg * math.Pi / 180
	sin, cos := math.Sin(a), math.Cos(a)
	w, h := float64(img.Rect.Dx()), float64(img.Rect.Dy())
	nw := int(math.Ceil(math.Abs(w*cos) + math.Abs(h*sin)))
	nh := int(math.Ceil(math.Abs(w*sin) + math.Abs(h*cos)))
	out := image.NewRGBA(image.Rect(0, 0, nw, nh))
	for y := range nh {
		for x := range nw {
			dx, dy := float64(x)-float64(nw)/2, float64(y)-float64(nh)/2
			sx := cos*dx - sin*dy + w/2
			sy := sin*dx + cos*dy + h/2
			o := out.PixOffset(x, y)
			if sx < 0 || sy < 0 || sx > w-1 || sy > h-1 {
				out.Pix[o], out.Pix[o+1], out.Pix[o+2], out.Pix[o+3] = bg.R, bg.G, bg.B, 255
				continue
			}
			r, g, b := sample(img, sx, sy)
			out.Pix[o], out.Pix[o+1], out.Pix[o+2], out.Pix[o+3] = uint8(r+0.5), uint8(g+0.5), uint8(b+0.5), 255
		}
	}
	return out
}

// TestRotated reads a meter line turned by a few degrees: the box must
// follow the slant (a rotated rectangle, not an axis-aligned one) and the
// text must still read.
func TestRotated(t *testing.T) {
	m := model(t)
	s := scene{font: "DejaVuSans.ttf", size: 36, lines: []string{"004521.7 kWh"}, fg: black, bg: white, noise: 6, seed: 9}
	for _, deg := range []float64{-8, 6, 12} {
		img := rotate(render(t, s), deg, white)
		r := infer(t, m, encodePNG(t, img))
		sim := similarity(squash(r.Text), squash(s.lines[0]))
		t.Logf("%v°: %q (similarity %.3f) %+v", deg, r.Text, sim, r.Lines)
		if sim < 0.9 || len(r.Lines) != 1 {
			t.Errorf("%v°: read %q, want %q in one line", deg, r.Text, s.lines[0])
			continue
		}
		bx := r.Lines[0].Box
		// Counter-clockwise on screen: the right end rises (y decreases).
		slope := -math.Atan2(float64(bx[1][1]-bx[0][1]), float64(bx[1][0]-bx[0][0])) * 180 / math.Pi
		if math.Abs(slope-deg) > 2 {
			t.Errorf("%v°: box %v slopes %.1f°", deg, bx, slope)
		}
	}
}

// pageReference is what the scanned page (skimage's page.png) says,
// transcribed by eye, line by line.
var pageReference = []string{
	"Region-based segmentation",
	"Let us first determine markers of the coins and the",
	"background. These markers are pixels that we can label",
	"unambiguously as either object or background. Here,",
	"the markers are found at the two extreme parts of the",
	"histogram of grey values:",
	">>> markers = np.zeros_like(coins)",
}

// TestPage reads a real scanned page nobody here made and compares it with
// a transcription: every reference line must be matched by a line read
// with similarity (spaces ignored) ≥ 0.85, and ≥ 90% of the reference
// words must appear among the words read.
func TestPage(t *testing.T) {
	m := model(t)
	b, err := os.ReadFile(pagePath(t))
	if err != nil {
		t.Fatal(err)
	}
	r := infer(t, m, b)
	for _, l := range r.Lines {
		t.Logf("%.3f %v %q", l.Confidence, l.Box, l.Text)
	}
	if r.Width != 384 || r.Height != 191 {
		t.Errorf("size %dx%d, want 384x191", r.Width, r.Height)
	}
	for _, ref := range pageReference {
		best, bestText := 0.0, ""
		for _, l := range r.Lines {
			if s := similarity(squash(l.Text), squash(ref)); s > best {
				best, bestText = s, l.Text
			}
		}
		t.Logf("%.3f %q ~ %q", best, ref, bestText)
		if best < 0.85 {
			t.Errorf("reference line %q: best match %q, similarity %.3f < 0.85", ref, bestText, best)
		}
	}
	read := squash(r.Text)
	found, total := 0, 0
	for _, ref := range pageReference {
		for _, w := range strings.Fields(ref) {
			total++
			if strings.Contains(read, w) {
				found++
			}
		}
	}
	frac := float64(found) / float64(total)
	t.Logf("%d of %d reference words found (%.2f)", found, total, frac)
	if frac < 0.9 {
		t.Errorf("only %d of %d reference words found", found, total)
	}
}

// TestConcurrent runs requests from several goroutines on one model: each
// must read its own image.
func TestConcurrent(t *testing.T) {
	m := model(t)
	texts := []string{"004521.7 kWh", "L1 230.4V", "12:45", "0815"}
	imgs := make([][]byte, len(texts))
	for i, s := range texts {
		imgs[i] = encodePNG(t, render(t, scene{font: "DejaVuSansMono.ttf", size: 32, lines: []string{s}, fg: black, bg: white}))
	}
	errs := make(chan string, 4*len(texts))
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for k := range len(texts) {
				i := (g + k) % len(texts)
				in, _ := json.Marshal(map[string][]byte{"image": imgs[i]})
				out, err := m.Infer(context.Background(), inference.Request{Input: in})
				if err != nil {
					errs <- err.Error()
					continue
				}
				if got := out.(Result).Text; similarity(squash(got), squash(texts[i])) < 0.9 {
					errs <- "read " + got + ", want " + texts[i]
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestCanceled checks that a canceled context stops a request before the
// models run.
func TestCanceled(t *testing.T) {
	m := model(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	in, _ := json.Marshal(map[string][]byte{"image": encodePNG(t, warmupImage())})
	if _, err := m.Infer(ctx, inference.Request{Input: in}); err == nil || inference.IsInvalidInput(err) {
		t.Fatalf("canceled request: %v", err)
	}
}

// TestInfo checks the catalog entry of the loaded model.
func TestInfo(t *testing.T) {
	m := model(t)
	i := m.Info()
	if i.Name != "ocr" || i.Runtime == "" || i.WarmLatencyMS <= 0 || i.License != "Apache-2.0" {
		t.Errorf("info %+v", i)
	}
	for _, sum := range []string{
		"30a86f5731181461d08021402766601e4302a9b9b9666be8aff402696339cdff",
		"06b3e6af6c59a1ba5d53790ed8c2e4b2de389870b6cf5a97f349f3412cb269c0",
		"28b2362ad4ab2dc38769aa72feb535e3a9ddb3fd2a7585a05920e6393b1dc7f7",
	} {
		if !strings.Contains(i.Checksum, sum) {
			t.Errorf("checksum %q lacks the pinned %s (models.lock)", i.Checksum, sum)
		}
	}
	for _, s := range []json.RawMessage{i.Input, i.Output} {
		if !json.Valid(s) {
			t.Errorf("schema is not JSON: %s", s)
		}
	}
	d := Describe()
	if d.Name != i.Name || d.Checksum != "" || d.Source != i.Source {
		t.Errorf("Describe %+v", d)
	}
	t.Logf("warm latency %.1f ms, %s", i.WarmLatencyMS, i.Runtime)
}

// TestNewErrors checks the load errors a user can act on.
func TestNewErrors(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Errorf("no Dir: %v", err)
	}
	if initErr != nil {
		missing(t, initErr)
	}
	if _, err := New(Config{Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "make models") {
		t.Errorf("empty dir: %v", err)
	}
	if _, err := New(Config{Dir: modelsDir(), BoxThresh: 1.5}); err == nil {
		t.Error("BoxThresh 1.5 accepted")
	}
}

// TestBlank checks that an image without text reads as no lines, encoded
// as an empty array.
func TestBlank(t *testing.T) {
	m := model(t)
	img := render(t, scene{font: "DejaVuSans.ttf", size: 20, lines: []string{"                    ", "                    "}, fg: black, bg: lcdBG, noise: 12, seed: 11})
	r := infer(t, m, encodePNG(t, img))
	if len(r.Lines) != 0 || r.Text != "" {
		t.Errorf("blank image read as %+v", r)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"lines":[]`) {
		t.Errorf("output %s", b)
	}
}

// TestWarmupImage checks that the image New warms up on reads as the
// reading drawn on it (in a bitmap font unlike the test fonts), so that
// warm-up runs both models on a line of text.
func TestWarmupImage(t *testing.T) {
	m := model(t)
	r, err := m.read(context.Background(), warmupImage())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Lines) != 1 || similarity(squash(r.Text), "04521.7kWh") < 0.9 {
		t.Errorf("warm-up image read as %+v", r)
	}
}
