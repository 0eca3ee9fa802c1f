package repository

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// maxElements bounds one tensor's elements (the request size limit bounds
// them sooner; this keeps a shape's product from overflowing).
const maxElements = 1 << 26

// wireTensor is a tensor of the Open Inference Protocol (KServe v2):
// shape, datatype, and the data flat in row-major order, as a JSON array
// of numbers or as a string of base64 raw little-endian bytes (what CBOR
// byte strings become).
type wireTensor struct {
	Name     string          `json:"name"`
	Shape    []int64         `json:"shape"`
	Datatype string          `json:"datatype"`
	Data     json.RawMessage `json:"data"`
}

// tensorInput is a repository model's input.
type tensorInput struct {
	Inputs []wireTensor `json:"inputs"`
}

// decode reads a request's input: plain tensors, or the preprocessed
// form of the model's recipe (with any other tensors in "inputs").
func (c *Config) decode(raw json.RawMessage) ([]onnx.Tensor, error) {
	p := c.Preprocess
	if p == nil {
		return decodeInputs(raw, c.Inputs)
	}
	t, rest, ok, err := p.preprocessed(raw, c.Inputs)
	if err != nil {
		return nil, err
	}
	if !ok {
		return decodeInputs(raw, c.Inputs)
	}
	s := p.input(c.Inputs)
	others := slices.DeleteFunc(slices.Clone(c.Inputs), func(o TensorSpec) bool { return o.Name == s.Name })
	if len(others) == 0 {
		return []onnx.Tensor{t}, nil
	}
	if rest == nil {
		rest = json.RawMessage(`[]`)
	}
	in, err := decodeInputs(json.RawMessage(`{"inputs":`+string(rest)+`}`), others)
	if err != nil {
		return nil, err
	}
	out := make([]onnx.Tensor, 0, len(c.Inputs))
	for _, spec := range c.Inputs {
		if spec.Name == s.Name {
			out = append(out, t)
			continue
		}
		out = append(out, in[0])
		in = in[1:]
	}
	return out, nil
}

// decodeInputs reads a request's input into one tensor per declared
// input, in declaration order, checking names, datatypes, shapes and
// element counts first: any mismatch is an invalid input naming the
// tensor, what the model takes and what came.
func decodeInputs(raw json.RawMessage, specs []TensorSpec) ([]onnx.Tensor, error) {
	var in tensorInput
	if err := json.Unmarshal(raw, &in); err != nil || in.Inputs == nil {
		return nil, inference.InvalidInput("input: want {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}, ...]} with the tensors %s", describe(specs))
	}
	byName := map[string]*wireTensor{}
	for i := range in.Inputs {
		t := &in.Inputs[i]
		if byName[t.Name] != nil {
			return nil, inference.InvalidInput("input tensor %q given twice", t.Name)
		}
		byName[t.Name] = t
	}
	out := make([]onnx.Tensor, len(specs))
	for i, s := range specs {
		t := byName[s.Name]
		if t == nil {
			return nil, inference.InvalidInput("input tensor %q is missing; the model takes %s", s.Name, describe(specs))
		}
		delete(byName, s.Name)
		var err error
		if out[i], err = decodeTensor(t, s); err != nil {
			return nil, err
		}
	}
	for name := range byName {
		return nil, inference.InvalidInput("input tensor %q is not one of the model's: %s", name, describe(specs))
	}
	return out, nil
}

func decodeTensor(t *wireTensor, s TensorSpec) (onnx.Tensor, error) {
	want := dtypes[s.DType]
	if !strings.EqualFold(t.Datatype, want) {
		return onnx.Tensor{}, inference.InvalidInput("input tensor %q: datatype %q, the model takes %s", s.Name, t.Datatype, want)
	}
	if len(t.Shape) != len(s.Shape) {
		return onnx.Tensor{}, inference.InvalidInput("input tensor %q: shape %v, the model takes %s", s.Name, t.Shape, shapeString(s.Shape))
	}
	n := int64(1)
	for j, d := range t.Shape {
		if d < 1 || (s.Shape[j] > 0 && d != s.Shape[j]) {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: shape %v, the model takes %s", s.Name, t.Shape, shapeString(s.Shape))
		}
		if n *= d; n > maxElements {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: shape %v holds more than %d elements", s.Name, t.Shape, maxElements)
		}
	}
	shape := append([]int64(nil), t.Shape...)
	size := map[string]int64{"float32": 4, "int64": 8}[s.DType]
	data := t.Data
	if len(data) > 0 && data[0] == '"' {
		var b64 string
		if err := json.Unmarshal(data, &b64); err != nil {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: data: %v", s.Name, err)
		}
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: data is a string but not base64: %v", s.Name, err)
		}
		if int64(len(raw)) != n*size {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: %d bytes of data, shape %v of %s takes %d", s.Name, len(raw), t.Shape, want, n*size)
		}
		if s.DType == "int64" {
			v := make([]int64, n)
			for k := range v {
				v[k] = int64(binary.LittleEndian.Uint64(raw[8*k:]))
			}
			return onnx.Int64(v, shape...), nil
		}
		v := make([]float32, n)
		for k := range v {
			v[k] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:]))
		}
		return onnx.Float32(v, shape...), nil
	}
	if s.DType == "int64" {
		var v []int64
		if err := json.Unmarshal(data, &v); err != nil {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: data: want a flat array of integers (or base64 little-endian bytes): %v", s.Name, err)
		}
		if int64(len(v)) != n {
			return onnx.Tensor{}, inference.InvalidInput("input tensor %q: %d elements of data, shape %v takes %d", s.Name, len(v), t.Shape, n)
		}
		return onnx.Int64(v, shape...), nil
	}
	var v []float32
	if err := json.Unmarshal(data, &v); err != nil {
		return onnx.Tensor{}, inference.InvalidInput("input tensor %q: data: want a flat array of numbers (or base64 little-endian bytes): %v", s.Name, err)
	}
	if int64(len(v)) != n {
		return onnx.Tensor{}, inference.InvalidInput("input tensor %q: %d elements of data, shape %v takes %d", s.Name, len(v), t.Shape, n)
	}
	return onnx.Float32(v, shape...), nil
}

// describe lists tensors as "x (FP32 [-1,4]), y (INT64 [1])".
func describe(specs []TensorSpec) string {
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = fmt.Sprintf("%s (%s %s)", s.Name, dtypes[s.DType], shapeString(s.Shape))
	}
	return strings.Join(parts, ", ")
}

func shapeString(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// Output is a repository model's output: its tensors, and the classes
// its postprocessing found.
type Output struct {
	Outputs []OutputTensor `json:"outputs"`
	// TopK has, for each row of the postprocessed output, its best classes.
	TopK [][]Class `json:"top_k,omitempty"`
}

// OutputTensor is an output tensor of the Open Inference Protocol.
type OutputTensor struct {
	Name     string  `json:"name"`
	Shape    []int64 `json:"shape"`
	Datatype string  `json:"datatype"`
	Data     any     `json:"data"` // floats (NaN and infinities as null) or int64s
}

// Class is one of a row's best classes.
type Class struct {
	Index int     `json:"index"`
	Label string  `json:"label,omitempty"`
	Score float32 `json:"score"`
}

// floats is float32 data as JSON, NaN and infinities as null (JSON has no
// numbers for them).
type floats []float32

func (f floats) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+len(f)*10)
	b = append(b, '[')
	for i, v := range f {
		if i > 0 {
			b = append(b, ',')
		}
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b = append(b, "null"...)
			continue
		}
		b = strconv.AppendFloat(b, float64(v), 'g', -1, 32)
	}
	return append(b, ']'), nil
}

// encodeOutputs builds the output of one run, postprocessed as c says.
func encodeOutputs(c *Config, tensors []onnx.Tensor) (Output, error) {
	var out Output
	post := c.postOutput()
	for i, s := range c.Outputs {
		t := tensors[i]
		ot := OutputTensor{Name: s.Name, Shape: t.Shape, Datatype: dtypes[s.DType]}
		switch {
		case t.F32 != nil:
			if post != nil && post.Name == s.Name {
				top, err := postprocess(c, t)
				if err != nil {
					return Output{}, err
				}
				out.TopK = top
			}
			ot.Data = floats(t.F32)
		case t.I64 != nil:
			ot.Data = t.I64
		default:
			ot.Data = []any{}
		}
		out.Outputs = append(out.Outputs, ot)
	}
	return out, nil
}

// postprocess applies the activation to t in place, along its last
// dimension, and returns each row's top k classes.
func postprocess(c *Config, t onnx.Tensor) ([][]Class, error) {
	p := c.Postprocess
	if len(t.Shape) == 0 {
		return nil, fmt.Errorf("postprocess: output has no dimensions")
	}
	width := int(t.Shape[len(t.Shape)-1])
	if width < 1 || len(t.F32)%width != 0 {
		return nil, fmt.Errorf("postprocess: output shape %v", t.Shape)
	}
	var top [][]Class
	for r := 0; r < len(t.F32); r += width {
		row := t.F32[r : r+width]
		switch p.Activation {
		case "softmax":
			softmax(row)
		case "sigmoid":
			for i, v := range row {
				row[i] = float32(1 / (1 + math.Exp(-float64(v))))
			}
		}
		if p.TopK > 0 {
			top = append(top, topK(row, p.TopK, c.labels))
		}
	}
	return top, nil
}

func softmax(row []float32) {
	m := math.Inf(-1)
	for _, v := range row {
		m = max(m, float64(v))
	}
	sum := 0.0
	for i, v := range row {
		e := math.Exp(float64(v) - m)
		row[i] = float32(e)
		sum += e
	}
	for i := range row {
		row[i] = float32(float64(row[i]) / sum)
	}
}

// topK is the k highest scores of row, best first (ties: lower index
// first), with their labels.
func topK(row []float32, k int, labels []string) []Class {
	k = min(k, len(row))
	best := make([]Class, 0, k+1)
	for i, v := range row {
		if math.IsNaN(float64(v)) {
			continue
		}
		pos := len(best)
		for pos > 0 && best[pos-1].Score < v {
			pos--
		}
		if pos >= k {
			continue
		}
		best = append(best, Class{})
		copy(best[pos+1:], best[pos:])
		best[pos] = Class{Index: i, Score: v}
		if len(best) > k {
			best = best[:k]
		}
	}
	for i := range best {
		if best[i].Index < len(labels) {
			best[i].Label = labels[best[i].Index]
		}
	}
	return best
}
