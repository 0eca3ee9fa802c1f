package anomaly

import (
	"context"
	"encoding/json"
	"math"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// FuzzInfer feeds arbitrary input and params bytes to a model whose series
// are past warm-up. Infer must never panic, must fail only with
// InvalidInput, and must return output that encodes as JSON with finite,
// non-negative scores.
func FuzzInfer(f *testing.F) {
	for _, s := range [][2]string{
		{`{"sensor":"temp","value":21.5}`, ``},
		{`{"sensor":"temp","value":1e100,"ts":1732500000000}`, `{"z":4}`},
		{`{"sensor":"temp","values":[1,2,3e5,-4],"ts":[1,2,"2024-11-25T01:20:00Z",4]}`, `{"mad":2,"cusum_h":1,"cusum_k":0}`},
		{`{"sensor":"temp","values":[1, null]}`, ``},
		{`{"sensor":"temp","values":[ 1 , 2 ,3]}`, `null`},
		{`{"sensor":"t","value":"NaN"}`, `{"z":"x"}`},
		{`[]`, `[]`},
		{`{"sensor":"temp","value":-0,"ts":-62135596800000}`, `{}`},
	} {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, input, params []byte) {
		m := New(Config{MaxSeries: 4})
		warm := make([]float64, Warmup+5)
		for i := range warm {
			warm[i] = float64(i % 3)
		}
		w, _ := json.Marshal(map[string]any{"sensor": "temp", "values": warm})
		if _, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: w}); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			out, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: input, Params: params})
			if err != nil {
				if !inference.IsInvalidInput(err) {
					t.Fatalf("error is not InvalidInput: %v", err)
				}
				return
			}
			if _, err := json.Marshal(out); err != nil {
				t.Fatalf("output does not encode: %v", err)
			}
			var rs []Result
			switch r := out.(type) {
			case Result:
				rs = []Result{r}
			case BatchResult:
				rs = r.Results
			default:
				t.Fatalf("output is %T", out)
			}
			for _, r := range rs {
				for _, v := range []float64{r.Score, r.Scores.EWMAZ, r.Scores.MAD, r.Scores.CUSUM} {
					if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
						t.Fatalf("bad score in %+v", r)
					}
				}
				if r.IsAnomaly != (r.Score >= 1 && !r.WarmingUp && !r.Stale) {
					t.Fatalf("is_anomaly disagrees with score: %+v", r)
				}
			}
		}
	})
}
