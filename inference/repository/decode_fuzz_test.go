package repository

import (
	"encoding/json"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/mqttinfer/mqttinfer/inference"
)

// FuzzDecode feeds request inputs to the decoders of tensors and of the
// image and audio recipes: every input is either tensors whose data fill
// their shapes, or an invalid input error; nothing panics.
func FuzzDecode(f *testing.F) {
	configs := []string{
		"inputs: [{name: x, dtype: float32, shape: [-1, 4]}, {name: n, dtype: int64, shape: [-1]}]\noutputs: [{name: y, dtype: float32, shape: [-1]}]",
		"inputs: [{name: x, dtype: float32, shape: [1, 3, 2, 4]}]\noutputs: [{name: y, dtype: float32, shape: [-1]}]\npreprocess: {image: {width: 4, height: 2, resize: letterbox}}",
		"inputs: [{name: x, dtype: float32, shape: [1, -1]}, {name: g, dtype: float32, shape: [1]}]\noutputs: [{name: y, dtype: float32, shape: [-1]}]\npreprocess: {audio: {sample_rate: 16000}}",
	}
	var cs []*Config
	for _, y := range configs {
		var c Config
		if err := yaml.Unmarshal([]byte(y), &c); err != nil {
			f.Fatal(err)
		}
		if err := c.check(); err != nil {
			f.Fatal(err)
		}
		cs = append(cs, &c)
	}
	for _, s := range []string{
		`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"n","shape":[2],"datatype":"INT64","data":"AQAAAAAAAAACAAAAAAAAAA=="}]}`,
		`{"image":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}`,
		`{"pcm16":"AAABAP9/AIA=","sample_rate":16000,"inputs":[{"name":"g","shape":[1],"datatype":"FP32","data":[2]}]}`,
		`{"pcm16":"AAA","inputs":null}`,
		`{"inputs":[{"name":"x","shape":[4611686018427387904,4],"datatype":"FP32","data":[]}]}`,
	} {
		for i := range cs {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, raw []byte) {
		c := cs[int(which)%len(cs)]
		ts, err := c.decode(json.RawMessage(raw))
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("%q: %v is not an invalid input", raw, err)
			}
			return
		}
		if len(ts) != len(c.Inputs) {
			t.Fatalf("%q: %d tensors for %d inputs", raw, len(ts), len(c.Inputs))
		}
		for _, tn := range ts {
			n := int64(1)
			for _, d := range tn.Shape {
				n *= d
			}
			if got := int64(len(tn.F32) + len(tn.I64)); got != n {
				t.Fatalf("%q: shape %v with %d elements", raw, tn.Shape, got)
			}
		}
	})
}
