package repository

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// testPNG is a 4x2 image: the top row red, green, blue, white; the bottom
// row black, grey (128), (10, 20, 30), (200, 100, 50).
func testPNG(t *testing.T) string {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 4, 2))
	px := []color.NRGBA{
		{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255}, {255, 255, 255, 255},
		{0, 0, 0, 255}, {128, 128, 128, 255}, {10, 20, 30, 255}, {200, 100, 50, 255},
	}
	for i, c := range px {
		img.SetNRGBA(i%4, i/4, c)
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

// TestImageRecipe: the graph returns its input, so the output is the
// recipe's tensor, checked value by value against the pixels.
func TestImageRecipe(t *testing.T) {
	const tensors = "inputs: [{name: x, dtype: float32, shape: [-1, -1, -1, -1]}]\noutputs: [{name: y, dtype: float32, shape: [-1, -1, -1, -1]}]\n"
	dir := layout(t, map[string]string{
		// 0..1 RGB planes.
		"planes/model.yaml":   tensors + "preprocess: {image: {width: 4, height: 2}}\n",
		"planes/1/model.onnx": "graph:pass4",
		// 0..255 BGR interleaved, minus a per-channel mean, over a std.
		"bgr/model.yaml":   tensors + "preprocess: {image: {width: 4, height: 2, layout: NHWC, channels: BGR, scale: 1, mean: [1, 2, 3], std: [2, 4, 5]}}\n",
		"bgr/1/model.onnx": "graph:pass4",
		// Letterboxed into 4x4 on grey 114: rows 0 and 3 are the margin.
		"boxed/model.yaml":   tensors + "preprocess: {image: {width: 4, height: 4, resize: letterbox, pad: 114, scale: 1}}\n",
		"boxed/1/model.onnx": "graph:pass4",
	})
	_, reg := open(t, dir)
	img := testPNG(t)
	rgb := [][3]float64{{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}, {0, 0, 0}, {128, 128, 128}, {10, 20, 30}, {200, 100, 50}}

	out, _, err := infer(t, reg, "planes", "d1", "", fmt.Sprintf(`{"image":%q}`, img))
	if err != nil {
		t.Fatal(err)
	}
	y := floatsOf(t, out.Outputs[0].Data)
	if fmt.Sprint(out.Outputs[0].Shape) != "[1 3 2 4]" {
		t.Fatalf("planes: shape %v", out.Outputs[0].Shape)
	}
	for i, p := range rgb {
		for c := range 3 {
			if got, want := float32(y[c*8+i]), float32(p[c])*float32(1.0/255); got != want {
				t.Errorf("planes: pixel %d channel %d = %v, want %v", i, c, got, want)
			}
		}
	}

	out, _, err = infer(t, reg, "bgr", "d1", "", fmt.Sprintf(`{"image":%q}`, img))
	if err != nil {
		t.Fatal(err)
	}
	y = floatsOf(t, out.Outputs[0].Data)
	if fmt.Sprint(out.Outputs[0].Shape) != "[1 2 4 3]" {
		t.Fatalf("bgr: shape %v", out.Outputs[0].Shape)
	}
	mean, std := []float64{1, 2, 3}, []float64{2, 4, 5}
	for i, p := range rgb {
		for c := range 3 {
			want := (p[2-c] - mean[c]) / std[c]
			if got := y[3*i+c]; abs(got-want) > 1e-5 {
				t.Errorf("bgr: pixel %d channel %d = %v, want %v", i, c, got, want)
			}
		}
	}

	out, _, err = infer(t, reg, "boxed", "d1", "", fmt.Sprintf(`{"image":%q}`, img))
	if err != nil {
		t.Fatal(err)
	}
	y = floatsOf(t, out.Outputs[0].Data)
	for c := range 3 {
		for row := range 4 {
			for col := range 4 {
				want := 114.0
				if row == 1 || row == 2 {
					want = rgb[(row-1)*4+col][c]
				}
				if got := y[c*16+row*4+col]; got != want {
					t.Errorf("letterbox: channel %d (%d,%d) = %v, want %v", c, row, col, got, want)
				}
			}
		}
	}

	// Plain tensors still work beside the recipe.
	if _, _, err := infer(t, reg, "planes", "d1", "", `{"inputs":[{"name":"x","shape":[1,1,1,1],"datatype":"FP32","data":[7]}]}`); err != nil {
		t.Errorf("tensors beside a recipe: %v", err)
	}
	for _, c := range []struct{ input, want string }{
		{`{"image":"bm90IGFuIGltYWdl"}`, "input.image is not a JPEG or PNG image"},
		{`{"image":"***"}`, "input.image is not valid base64"},
		{`{"image":""}`, "input.image is empty"},
		{`{"image":7}`, "input.image must be a base64 string"},
		{fmt.Sprintf(`{"image":%q,"colour":1}`, img), `unknown field "colour"`},
		{fmt.Sprintf(`{"image":%q,"inputs":[]}`, img), `fills the model's only input "x"`},
	} {
		_, _, err := infer(t, reg, "planes", "d1", "", c.input)
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60s: %v, want an invalid input with %q", c.input, err, c.want)
		}
	}
}

// TestAudioRecipe: pcm16 becomes samples in [-1, 1); another input (the
// gain) comes as a tensor beside it.
func TestAudioRecipe(t *testing.T) {
	dir := layout(t, map[string]string{
		"gain/model.yaml": `
inputs:
  - {name: x, dtype: float32, shape: [1, -1]}
  - {name: g, dtype: float32, shape: [1]}
outputs: [{name: y, dtype: float32, shape: [1, -1]}]
preprocess: {input: x, audio: {sample_rate: 16000}}
`,
		"gain/1/model.onnx": "graph:gain",
		"fixed/model.yaml": `
inputs:
  - {name: x, dtype: float32, shape: [1, 4]}
  - {name: g, dtype: float32, shape: [1]}
outputs: [{name: y, dtype: float32, shape: [1, 4]}]
preprocess: {audio: {sample_rate: 8000}}
warmup: {g: 1}
`,
		"fixed/1/model.onnx": "graph:gain",
	})
	_, reg := open(t, dir)
	samples := []int16{0, 16384, -32768, 32767, -1}
	raw := make([]byte, 2*len(samples))
	for i, s := range samples {
		binary.LittleEndian.PutUint16(raw[2*i:], uint16(s))
	}
	pcm := base64.StdEncoding.EncodeToString(raw)
	out, _, err := infer(t, reg, "gain", "d1", "", fmt.Sprintf(`{"pcm16":%q,"sample_rate":16000,"inputs":[{"name":"g","shape":[1],"datatype":"FP32","data":[2]}]}`, pcm))
	if err != nil {
		t.Fatal(err)
	}
	y := floatsOf(t, out.Outputs[0].Data)
	for i, s := range samples {
		if want := 2 * float32(s) / 32768; float32(y[i]) != want {
			t.Errorf("sample %d = %v, want %v", i, y[i], want)
		}
	}
	for _, c := range []struct{ model, input, want string }{
		{"gain", fmt.Sprintf(`{"pcm16":%q,"sample_rate":44100,"inputs":[]}`, pcm), "input.sample_rate must be 16000"},
		{"gain", fmt.Sprintf(`{"pcm16":%q}`, pcm), `input tensor "g" is missing`},
		{"gain", `{"pcm16":"AAAA","inputs":[]}`, "an odd number"},
		{"fixed", fmt.Sprintf(`{"pcm16":%q,"inputs":[{"name":"g","shape":[1],"datatype":"FP32","data":[2]}]}`, pcm), "holds 5 samples; the model takes exactly 4 (0.0005 s at 8000 Hz)"},
	} {
		_, _, err := infer(t, reg, c.model, "d1", "", c.input)
		if !inference.IsInvalidInput(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %.60s: %v, want an invalid input with %q", c.model, c.input, err, c.want)
		}
	}
	m, _ := reg.Get("gain")
	if s := string(m.Info().Input); !strings.Contains(s, `"pcm16"`) || !strings.Contains(s, `"oneOf"`) {
		t.Errorf("input schema %s", s)
	}
}

// TestRecipeRefusals: a recipe that cannot fill its input is refused at
// load with the reason; the repository's other models still load.
func TestRecipeRefusals(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"preprocess: {image: {width: 4, height: 2}, audio: {sample_rate: 16000}}", "exactly one of image and audio"},
		{"preprocess: {input: z, image: {width: 4, height: 2}}", `input "z" is not declared`},
		{"preprocess: {image: {width: 0, height: 2}}", "width 0"},
		{"preprocess: {image: {width: 4, height: 2, layout: CHW}}", `layout "CHW"`},
		{"preprocess: {image: {width: 4, height: 2, mean: [1, 2]}}", "want 3 values"},
		{"preprocess: {image: {width: 4, height: 2, std: [1, 0, 1]}}", "divides by zero"},
		{"preprocess: {audio: {sample_rate: 16000}}", `input "x" has shape [-1,-1,-1,-1]; samples fill`},
	} {
		dir := layout(t, map[string]string{
			"bad/model.yaml":      "inputs: [{name: x, dtype: float32, shape: [-1, -1, -1, -1]}]\noutputs: [{name: y, dtype: float32, shape: [-1, -1, -1, -1]}]\n" + c.yaml + "\n",
			"bad/1/model.onnx":    "graph:pass4",
			"affine/model.yaml":   affineYAML,
			"affine/1/model.onnx": "graph:affine2",
		})
		_, reg := open(t, dir)
		m, ok := reg.Get("bad")
		if ok && !strings.Contains(m.Info().Unavailable, c.want) {
			t.Errorf("%s: %+v, want refused with %q", c.yaml, m.Info(), c.want)
		}
		if _, ok := reg.Get("affine"); !ok {
			t.Errorf("%s: the good model did not load", c.yaml)
		}
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
