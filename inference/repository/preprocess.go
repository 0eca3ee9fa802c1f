package repository

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"slices"
	"strconv"

	"golang.org/x/image/draw"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/media"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// MaxPixels bounds the images a preprocessing recipe decodes (checked from
// the header, before the pixels are decoded).
const MaxPixels = 16 << 20

// Preprocess is a recipe that turns what a device has (a JPEG or PNG, 16-bit
// PCM) into one of the model's input tensors, so that the device can send
// {"image": "<base64>"} or {"pcm16": "<base64>"} instead of the tensor.
type Preprocess struct {
	// Input is the declared input the recipe fills; "" means the first.
	Input string       `yaml:"input"`
	Image *ImageRecipe `yaml:"image"`
	Audio *AudioRecipe `yaml:"audio"`
}

// ImageRecipe turns a JPEG or PNG into a float32 tensor of 3 channels.
type ImageRecipe struct {
	Width  int `yaml:"width"`
	Height int `yaml:"height"`
	// Resize is "stretch" (the default: to width×height, aspect ratio
	// lost) or "letterbox" (scaled to fit, aspect ratio kept, centred on
	// Pad).
	Resize string `yaml:"resize"`
	// Pad is the 0..255 grey level of a letterbox's margins.
	Pad int `yaml:"pad"`
	// Layout is "NCHW" (the default: planes) or "NHWC" (interleaved).
	Layout string `yaml:"layout"`
	// Channels is the order of the channels: "RGB" (the default) or "BGR".
	Channels string `yaml:"channels"`
	// Each value is (pixel·Scale − Mean[c]) / Std[c], pixel in 0..255;
	// Scale defaults to 1/255, Mean to 0 and Std to 1 (Mean and Std are
	// in the order of Channels).
	Scale *float64   `yaml:"scale"`
	Mean  []float64  `yaml:"mean"`
	Std   []float64  `yaml:"std"`
	norm  [3]float32 // per-channel scale and offset, from the above
	off   [3]float32
}

// AudioRecipe turns 16-bit little-endian mono PCM into float32 samples in
// [-1, 1).
type AudioRecipe struct {
	// SampleRate is the rate the model takes; a request that states
	// another is refused (resample on the device).
	SampleRate int `yaml:"sample_rate"`
}

// input is the declared input the recipe fills.
func (p *Preprocess) input(specs []TensorSpec) *TensorSpec {
	for i := range specs {
		if specs[i].Name == p.Input || p.Input == "" {
			return &specs[i]
		}
	}
	return nil
}

// check reports a recipe's problems against the input it fills (the
// declared one at parse time, the graph's tightened one at load).
func (p *Preprocess) check(specs []TensorSpec) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("preprocess: "+format, args...))
	}
	s := p.input(specs)
	switch {
	case s == nil:
		return fmt.Errorf("preprocess: input %q is not declared", p.Input)
	case (p.Image == nil) == (p.Audio == nil):
		return errors.New("preprocess: want exactly one of image and audio")
	case s.DType != "float32":
		return fmt.Errorf("preprocess: input %q is %s: a recipe fills float32", s.Name, s.DType)
	}
	fixed := func(d int64, want int) bool { return d == -1 || d == int64(want) }
	if im := p.Image; im != nil {
		if im.Width < 1 || im.Height < 1 || im.Width > 8192 || im.Height > 8192 {
			bad("image: width %d, height %d: want 1 to 8192 each", im.Width, im.Height)
		}
		if !slices.Contains([]string{"", "stretch", "letterbox"}, im.Resize) {
			bad("image: resize %q: want stretch or letterbox", im.Resize)
		}
		if im.Pad < 0 || im.Pad > 255 {
			bad("image: pad %d: want 0 to 255", im.Pad)
		}
		if !slices.Contains([]string{"", "RGB", "BGR"}, im.Channels) {
			bad("image: channels %q: want RGB or BGR", im.Channels)
		}
		for _, v := range []struct {
			name string
			vs   []float64
		}{{"mean", im.Mean}, {"std", im.Std}} {
			if v.vs != nil && len(v.vs) != 3 {
				bad("image: %s %v: want 3 values, one per channel", v.name, v.vs)
			}
		}
		for _, v := range im.Std {
			if v == 0 {
				bad("image: std %v: a zero divides by zero", im.Std)
			}
		}
		// The shape the recipe makes, with or without a batch of 1.
		h, w, c := 2, 3, 1
		switch im.Layout {
		case "", "NCHW":
		case "NHWC":
			h, w, c = 1, 2, 3
		default:
			bad("image: layout %q: want NCHW or NHWC", im.Layout)
		}
		sh := s.Shape
		if len(sh) == 3 {
			sh = append([]int64{1}, sh...)
		}
		if len(sh) != 4 || !fixed(sh[0], 1) || !fixed(sh[c], 3) || !fixed(sh[h], im.Height) || !fixed(sh[w], im.Width) {
			bad("image: input %q has shape %s; a %dx%d %s image makes %s", s.Name, shapeString(s.Shape), im.Width, im.Height, cmp(im.Layout, "NCHW"), shapeString(im.shape(len(s.Shape))))
		}
		im.prepare()
	}
	if a := p.Audio; a != nil {
		if a.SampleRate < 1000 || a.SampleRate > 384000 {
			bad("audio: sample_rate %d: want 1000 to 384000", a.SampleRate)
		}
		if n := len(s.Shape); n < 1 || n > 2 || (n == 2 && !fixed(s.Shape[0], 1)) {
			bad("audio: input %q has shape %s; samples fill [n] or [1, n]", s.Name, shapeString(s.Shape))
		}
	}
	return errors.Join(errs...)
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// shape is the tensor shape the recipe makes, of the given rank (3 or 4).
func (im *ImageRecipe) shape(rank int) []int64 {
	h, w := int64(im.Height), int64(im.Width)
	s := []int64{1, 3, h, w}
	if im.Layout == "NHWC" {
		s = []int64{1, h, w, 3}
	}
	return s[4-min(max(rank, 3), 4):]
}

func (im *ImageRecipe) prepare() {
	scale := 1.0 / 255
	if im.Scale != nil {
		scale = *im.Scale
	}
	for c := range 3 {
		mean, std := 0.0, 1.0
		if len(im.Mean) == 3 {
			mean = im.Mean[c]
		}
		if len(im.Std) == 3 && im.Std[c] != 0 {
			std = im.Std[c]
		}
		im.norm[c] = float32(scale / std)
		im.off[c] = float32(-mean / std)
	}
}

// tensor resizes img as the recipe says and lays it out as a tensor of
// the given rank.
func (im *ImageRecipe) tensor(img image.Image, rank int) onnx.Tensor {
	w, h := im.Width, im.Height
	canvas := image.NewRGBA(image.Rect(0, 0, w, h))
	b := img.Bounds()
	dst := canvas.Bounds()
	if im.Resize == "letterbox" {
		pad := uint8(im.Pad)
		for i := range canvas.Pix {
			canvas.Pix[i] = pad
		}
		s := min(float64(w)/float64(b.Dx()), float64(h)/float64(b.Dy()))
		sw := min(max(int(float64(b.Dx())*s+0.5), 1), w)
		sh := min(max(int(float64(b.Dy())*s+0.5), 1), h)
		x0, y0 := (w-sw)/2, (h-sh)/2
		dst = image.Rect(x0, y0, x0+sw, y0+sh)
	}
	if b.Dx() == dst.Dx() && b.Dy() == dst.Dy() {
		draw.Draw(canvas, dst, img, b.Min, draw.Src)
	} else {
		draw.ApproxBiLinear.Scale(canvas, dst, img, b, draw.Src, nil)
	}
	// Source channel for each output channel: R, G, B or B, G, R.
	order := [3]int{0, 1, 2}
	if im.Channels == "BGR" {
		order = [3]int{2, 1, 0}
	}
	n := w * h
	data := make([]float32, 3*n)
	for i := range n {
		p := canvas.Pix[4*i : 4*i+3 : 4*i+3]
		for c, src := range order {
			v := float32(p[src])*im.norm[c] + im.off[c]
			if im.Layout == "NHWC" {
				data[3*i+c] = v
			} else {
				data[c*n+i] = v
			}
		}
	}
	return onnx.Float32(data, im.shape(rank)...)
}

// preprocessed reads the preprocessed form of a request's input, if it is
// one: the recipe's tensor, and the other tensors the request gives in
// "inputs" (nil when the model has only the one input). ok is false when
// the input is plain tensors.
func (p *Preprocess) preprocessed(raw json.RawMessage, specs []TensorSpec) (tensor onnx.Tensor, rest json.RawMessage, ok bool, err error) {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return onnx.Tensor{}, nil, false, nil
	}
	key, form := "image", `{"image": "<base64 JPEG or PNG>"}`
	allowed := []string{"image", "inputs"}
	if p.Audio != nil {
		key, form = "pcm16", fmt.Sprintf(`{"pcm16": "<base64 of int16 little-endian mono %d Hz samples>", "sample_rate": %d}`, p.Audio.SampleRate, p.Audio.SampleRate)
		allowed = []string{"pcm16", "sample_rate", "inputs"}
	}
	v, has := fields[key]
	if !has {
		return onnx.Tensor{}, nil, false, nil
	}
	for k := range fields {
		if !slices.Contains(allowed, k) {
			return onnx.Tensor{}, nil, false, inference.InvalidInput("input: unknown field %q beside %s (the form is %s)", clipName(k), key, form)
		}
	}
	field := "input." + key
	var b64 string
	if err := json.Unmarshal(v, &b64); err != nil {
		return onnx.Tensor{}, nil, false, inference.InvalidInput("%s must be a base64 string: the form is %s", field, form)
	}
	s := p.input(specs)
	if im := p.Image; im != nil {
		b, err := media.Base64(field, b64, "a base64 JPEG or PNG")
		if err != nil {
			return onnx.Tensor{}, nil, false, err
		}
		img, err := media.Image(field, b, MaxPixels)
		if err != nil {
			return onnx.Tensor{}, nil, false, err
		}
		tensor = im.tensor(img, len(s.Shape))
	} else {
		if r, ok := fields["sample_rate"]; ok {
			sr, err := strconv.ParseFloat(string(bytes.TrimSpace(r)), 64)
			if err != nil || sr != float64(p.Audio.SampleRate) {
				return onnx.Tensor{}, nil, false, inference.InvalidInput("input.sample_rate must be %d: this model takes %d Hz mono audio only, resample it first (got %s)", p.Audio.SampleRate, p.Audio.SampleRate, clipName(string(r)))
			}
		}
		b, err := media.Base64(field, b64, "base64 int16 little-endian samples")
		if err != nil {
			return onnx.Tensor{}, nil, false, err
		}
		if len(b) > 2*maxElements {
			return onnx.Tensor{}, nil, false, inference.InvalidInput("%s holds more than %d samples", field, maxElements)
		}
		samples, err := media.PCM16(field, b)
		if err != nil {
			return onnx.Tensor{}, nil, false, err
		}
		n := int64(len(samples))
		if want := s.Shape[len(s.Shape)-1]; want > 0 && want != n {
			return onnx.Tensor{}, nil, false, inference.InvalidInput("%s holds %d samples; the model takes exactly %d (%s at %d Hz)", field, n, want, seconds(want, p.Audio.SampleRate), p.Audio.SampleRate)
		}
		shape := []int64{n}
		if len(s.Shape) == 2 {
			shape = []int64{1, n}
		}
		tensor = onnx.Float32(samples, shape...)
	}
	rest = fields["inputs"]
	if len(specs) == 1 && rest != nil {
		return onnx.Tensor{}, nil, false, inference.InvalidInput("input: %s fills the model's only input %q; drop \"inputs\"", key, s.Name)
	}
	return tensor, rest, true, nil
}

func seconds(n int64, rate int) string {
	return strconv.FormatFloat(float64(n)/float64(rate), 'g', 4, 64) + " s"
}

func clipName(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
