package anomaly

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/mqttinfer/mqttinfer/inference"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func infer(t testing.TB, m *Model, device, input, params string) (any, error) {
	t.Helper()
	var p json.RawMessage
	if params != "" {
		p = json.RawMessage(params)
	}
	return m.Infer(context.Background(), inference.Request{Device: device, Input: json.RawMessage(input), Params: p})
}

func one(t testing.TB, m *Model, device, input string) Result {
	t.Helper()
	out, err := infer(t, m, device, input, "")
	if err != nil {
		t.Fatalf("%s: %v", input, err)
	}
	r, ok := out.(Result)
	if !ok {
		t.Fatalf("%s: Infer returned %T, want Result", input, out)
	}
	return r
}

func noise(seed uint64, n int, level, sigma float64) []float64 {
	r := rand.New(rand.NewPCG(seed, 9))
	v := make([]float64, n)
	for i := range v {
		v[i] = level + sigma*r.NormFloat64()
	}
	return v
}

func TestInfo(t *testing.T) {
	info := New(Config{}).Info()
	if info.Name != "anomaly" || info.Version != "1" || info.Cost != 1 || info.Streaming ||
		info.License != "Apache-2.0" || info.Source != "built-in" || info.Description == "" || info.Unavailable != "" {
		t.Errorf("Info() = %+v", info)
	}
	if strings.Contains(info.Description, "\n") {
		t.Errorf("Description is not one line: %q", info.Description)
	}
	for name, s := range map[string]json.RawMessage{"input": info.Input, "output": info.Output} {
		var doc map[string]any
		if err := json.Unmarshal(s, &doc); err != nil {
			t.Fatalf("%s schema: %v", name, err)
		}
		if doc["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s schema: $schema = %v", name, doc["$schema"])
		}
	}
	// The catalog carries the schemas as they are.
	var reg inference.Registry
	if err := reg.Register(New(Config{})); err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(reg.Catalog()); err != nil {
		t.Fatalf("catalog does not encode: %v", err)
	}
}

// keys returns the property names of the object schema at path in doc.
func schemaProps(t *testing.T, doc map[string]any, path ...string) (props, required []string) {
	t.Helper()
	var cur any = doc
	for _, p := range path {
		cur = cur.(map[string]any)[p]
	}
	obj := cur.(map[string]any)
	for k := range obj["properties"].(map[string]any) {
		props = append(props, k)
	}
	for _, r := range obj["required"].([]any) {
		required = append(required, r.(string))
	}
	slices.Sort(props)
	return props, required
}

func jsonKeys(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// The published output schema describes exactly the fields Infer returns.
func TestOutputMatchesSchema(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(outputSchema, &doc); err != nil {
		t.Fatal(err)
	}
	m := New(Config{})
	for i, v := range noise(1, 30, 5, 1) {
		one(t, m, "d", `{"sensor":"t","value":`+ftoa(v)+`,"ts":`+itoa(int64(1000+i))+`}`)
	}
	r := one(t, m, "d", `{"sensor":"t","value":100,"ts":5000}`)
	if !r.IsAnomaly {
		t.Fatalf("a 95σ sample is not flagged: %+v", r)
	}
	stale := one(t, m, "d", `{"sensor":"t","value":1,"ts":1000}`)
	if !stale.Stale {
		t.Fatalf("an old ts is not stale: %+v", stale)
	}
	props, req := schemaProps(t, doc, "$defs", "result")
	got := jsonKeys(t, r)
	for _, k := range jsonKeys(t, stale) {
		if !slices.Contains(got, k) {
			got = append(got, k)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, props) {
		t.Errorf("result keys %v, schema properties %v", got, props)
	}
	for _, k := range req {
		if !slices.Contains(props, k) {
			t.Errorf("required %q is not a property", k)
		}
	}
	for _, sub := range []struct {
		name string
		v    any
	}{{"scores", r.Scores}, {"baseline", r.Baseline}} {
		props, _ := schemaProps(t, doc, "$defs", "result", "properties", sub.name)
		if got := jsonKeys(t, sub.v); !slices.Equal(got, props) {
			t.Errorf("%s keys %v, schema properties %v", sub.name, got, props)
		}
	}
	out, err := infer(t, m, "d", `{"sensor":"t","values":[5,6]}`, "")
	if err != nil {
		t.Fatal(err)
	}
	props, _ = schemaProps(t, doc, "$defs", "batch")
	if got := jsonKeys(t, out); !slices.Equal(got, props) {
		t.Errorf("batch keys %v, schema properties %v", got, props)
	}
}

func ftoa(f float64) string { b, _ := json.Marshal(f); return string(b) }
func itoa(i int64) string   { b, _ := json.Marshal(i); return string(b) }

func TestBadInputs(t *testing.T) {
	big := `{"sensor":"t","values":[` + strings.Repeat("1,", MaxBatch) + `1]}`
	for _, c := range []struct {
		name, input, params string
		want                string // the message names this
	}{
		{"null input", `null`, "", "input"},
		{"empty input", ``, "", "input"},
		{"array input", `[1,2]`, "", "input must be a JSON object"},
		{"string input", `"temp"`, "", "input must be a JSON object"},
		{"broken JSON", `{"sensor":`, "", "input"},
		{"missing sensor", `{"value":1}`, "", "input.sensor"},
		{"sensor number", `{"sensor":5,"value":1}`, "", "input.sensor"},
		{"sensor empty", `{"sensor":"","value":1}`, "", "input.sensor"},
		{"sensor space", `{"sensor":"te mp","value":1}`, "", "input.sensor"},
		{"sensor slash", `{"sensor":"a/b","value":1}`, "", "input.sensor"},
		{"sensor too long", `{"sensor":"` + strings.Repeat("s", 65) + `","value":1}`, "", "input.sensor"},
		{"no value", `{"sensor":"t"}`, "", "input.value"},
		{"value string", `{"sensor":"t","value":"21.5"}`, "", "input.value"},
		{"value NaN string", `{"sensor":"t","value":"NaN"}`, "", "input.value"},
		{"value null", `{"sensor":"t","value":null}`, "", "input.value"},
		{"value bool", `{"sensor":"t","value":true}`, "", "input.value"},
		{"value overflow", `{"sensor":"t","value":1e400}`, "", "input.value"},
		{"value too big", `{"sensor":"t","value":-2e100}`, "", "input.value"},
		{"value and values", `{"sensor":"t","value":1,"values":[1]}`, "", "values"},
		{"values empty", `{"sensor":"t","values":[]}`, "", "input.values"},
		{"values not array", `{"sensor":"t","values":5}`, "", "input.values"},
		{"values null element", `{"sensor":"t","values":[1, null]}`, "", "input.values[1]"},
		{"values string element", `{"sensor":"t","values":[1,2,"3"]}`, "", "input.values[2]"},
		{"values nested", `{"sensor":"t","values":[[1]]}`, "", "input.values[0]"},
		{"values Inf", `{"sensor":"t","values":[1,1e999]}`, "", "input.values[1]"},
		{"values too many", big, "", "input.values"},
		{"ts words", `{"sensor":"t","value":1,"ts":"yesterday"}`, "", "input.ts"},
		{"ts fraction", `{"sensor":"t","value":1,"ts":1.5}`, "", "input.ts"},
		{"ts bool", `{"sensor":"t","value":1,"ts":true}`, "", "input.ts"},
		{"ts too far", `{"sensor":"t","value":1,"ts":1e20}`, "", "input.ts"},
		{"ts array with value", `{"sensor":"t","value":1,"ts":[1]}`, "", "input.ts"},
		{"ts short", `{"sensor":"t","values":[1,2],"ts":[1]}`, "", "input.ts"},
		{"ts scalar with values", `{"sensor":"t","values":[1,2],"ts":5}`, "", "input.ts"},
		{"ts bad element", `{"sensor":"t","values":[1,2],"ts":[1,"x"]}`, "", "input.ts[1]"},
		{"unknown field", `{"sensor":"t","value":1,"vaule":2}`, "", `"vaule"`},
		{"params array", `{"sensor":"t","value":1}`, `[1]`, "params"},
		{"params z zero", `{"sensor":"t","value":1}`, `{"z":0}`, "params.z"},
		{"params z negative", `{"sensor":"t","value":1}`, `{"z":-1}`, "params.z"},
		{"params z string", `{"sensor":"t","value":1}`, `{"z":"4"}`, "params.z"},
		{"params mad huge", `{"sensor":"t","value":1}`, `{"mad":1000}`, "params.mad"},
		{"params cusum_h zero", `{"sensor":"t","value":1}`, `{"cusum_h":0}`, "params.cusum_h"},
		{"params cusum_k negative", `{"sensor":"t","value":1}`, `{"cusum_k":-0.1}`, "params.cusum_k"},
		{"params unknown", `{"sensor":"t","value":1}`, `{"threshold":3}`, `"threshold"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := New(Config{})
			out, err := infer(t, m, "d", c.input, c.params)
			if err == nil {
				t.Fatalf("accepted, output %+v", out)
			}
			if !inference.IsInvalidInput(err) {
				t.Fatalf("error %v is not InvalidInput", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("message %q does not name %s", err, c.want)
			}
			if len(err.Error()) > 300 {
				t.Errorf("message is %d bytes long", len(err.Error()))
			}
			if m.Len() != 0 {
				t.Errorf("an invalid request created %d series", m.Len())
			}
		})
	}
}

// A batch is checked whole before it touches the series.
func TestInvalidBatchLeavesSeries(t *testing.T) {
	m := New(Config{})
	for range 5 {
		one(t, m, "d", `{"sensor":"t","value":1}`)
	}
	if _, err := infer(t, m, "d", `{"sensor":"t","values":[1,2,3,"4"]}`, ""); !inference.IsInvalidInput(err) {
		t.Fatalf("err = %v, want InvalidInput", err)
	}
	if r := one(t, m, "d", `{"sensor":"t","value":1}`); r.N != 6 {
		t.Errorf("n = %d after 6 valid samples", r.N)
	}
}

func TestValidInputs(t *testing.T) {
	m := New(Config{})
	for _, c := range []struct {
		input  string
		params string
		ts     int64 // 0: no ts
	}{
		{`{"sensor":"temp","value":21.5}`, "", 0},
		{` {"sensor":"a.B_c-9","value":-3e-7,"ts":1732500000000} `, "", 1732500000000},
		{`{"sensor":"t2","value":0,"ts":"2024-11-25T01:20:00Z"}`, "", 1732497600000},
		{`{"sensor":"t3","value":1e-400,"ts":"2024-11-25T02:20:00.5+01:00"}`, "null", 1732497600500},
		{`{"sensor":"t4","value":1e100,"ts":1.7325e12}`, `{}`, 1732500000000},
		{`{"sensor":"` + strings.Repeat("s", 64) + `","value":1}`, `{"z":100,"mad":0.5,"cusum_h":1000,"cusum_k":0}`, 0},
	} {
		out, err := infer(t, m, "d", c.input, c.params)
		if err != nil {
			t.Errorf("%s: %v", c.input, err)
			continue
		}
		r := out.(Result)
		switch {
		case c.ts == 0 && r.TS != nil:
			t.Errorf("%s: ts = %d, want none", c.input, *r.TS)
		case c.ts != 0 && (r.TS == nil || *r.TS != c.ts):
			t.Errorf("%s: ts = %v, want %d", c.input, r.TS, c.ts)
		}
		if r.N != 1 || !r.WarmingUp || r.IsAnomaly || r.Method != MethodNone {
			t.Errorf("%s: first sample %+v", c.input, r)
		}
	}
	out, err := infer(t, m, "d", `{"sensor":"u","values":[1e-400, -0, 2.5E+3 ,1e100]}`, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []float64
	for _, r := range out.(BatchResult).Results {
		got = append(got, r.Value)
	}
	if !slices.Equal(got, []float64{0, 0, 2500, 1e100}) {
		t.Errorf("values parsed as %v", got)
	}
	big := make([]float64, MaxBatch)
	in, _ := json.Marshal(map[string]any{"sensor": "big", "values": big})
	out, err = infer(t, m, "d", string(in), "")
	if err != nil {
		t.Fatalf("a batch of MaxBatch values: %v", err)
	}
	if b := out.(BatchResult); len(b.Results) != MaxBatch || b.Results[MaxBatch-1].N != MaxBatch {
		t.Errorf("batch of %d: %d results", MaxBatch, len(b.Results))
	}
}

// The first Warmup samples are learned from and never flagged, whatever
// they are; the next one is judged.
func TestWarmup(t *testing.T) {
	m := New(Config{})
	v := noise(2, Warmup, 50, 2)
	v[4] = 5000 // a spike during warm-up must not blind the series
	for i, x := range v {
		r := one(t, m, "d", `{"sensor":"t","value":`+ftoa(x)+`}`)
		if !r.WarmingUp || r.IsAnomaly || r.N != int64(i+1) || r.Score != 0 {
			t.Fatalf("sample %d: %+v", i+1, r)
		}
	}
	r := one(t, m, "d", `{"sensor":"t","value":70}`) // 10σ
	if r.WarmingUp || r.N != Warmup+1 {
		t.Fatalf("sample %d still warming up: %+v", Warmup+1, r)
	}
	if !r.IsAnomaly || r.Kind != KindSpike {
		t.Errorf("a 10σ sample right after warm-up is not a spike: %+v", r)
	}
	// The warm-up spike was winsorised out of the starting scale.
	if r.Baseline.Std > 4 || math.Abs(r.Baseline.Mean-50) > 3 {
		t.Errorf("baseline after a warm-up spike: %+v, want mean ≈ 50, std ≈ 2", r.Baseline)
	}
}

// A huge spike is flagged, barely moves the baseline, and the samples after
// it are judged as before.
func TestSpikeDoesNotPoisonBaseline(t *testing.T) {
	m := New(Config{})
	v := noise(3, 200, 10, 1)
	for _, x := range v[:100] {
		one(t, m, "d", `{"sensor":"t","value":`+ftoa(x)+`}`)
	}
	spike := one(t, m, "d", `{"sensor":"t","value":1000}`)
	if !spike.IsAnomaly || spike.Kind != KindSpike || spike.Method != MethodMAD && spike.Method != MethodEWMA {
		t.Fatalf("a 990σ sample: %+v", spike)
	}
	if !slices.Equal(spike.Methods, []string{spike.Method, otherOf(spike.Method)}) {
		t.Errorf("methods %v, method %s: want both spike detectors, strongest first", spike.Methods, spike.Method)
	}
	after := one(t, m, "d", `{"sensor":"t","value":`+ftoa(v[100])+`}`)
	b0, b1 := spike.Baseline, after.Baseline
	if d := math.Abs(b1.Mean - b0.Mean); d > winsor*alpha*b0.Std+1e-9 {
		t.Errorf("the spike moved the mean by %g (std %g)", d, b0.Std)
	}
	if b1.Std > 1.2*b0.Std {
		t.Errorf("the spike moved the std from %g to %g", b0.Std, b1.Std)
	}
	// The window was full: the spike pushed out the oldest sample and is not counted.
	if b0.N != Window || b1.N != Window-1 || b1.MAD > 1.1*b0.MAD {
		t.Errorf("the spike entered the robust window: before %+v, after %+v", b0, b1)
	}
	flags := 0
	for _, x := range v[101:] {
		if one(t, m, "d", `{"sensor":"t","value":`+ftoa(x)+`}`).IsAnomaly {
			flags++
		}
	}
	if flags > 1 {
		t.Errorf("%d of 99 ordinary samples after the spike flagged", flags)
	}
}

func otherOf(method string) string {
	if method == MethodMAD {
		return MethodEWMA
	}
	return MethodMAD
}

// After a level shift is confirmed the baseline is at the new level and
// the new level is not flagged again.
func TestLevelShiftRelearns(t *testing.T) {
	m := New(Config{})
	v := noise(4, 300, 20, 1)
	for i := 150; i < len(v); i++ {
		v[i] += 10 // 10σ up
	}
	res := stream(t, m, "d", v, 1, "")
	first := -1
	for i, r := range res[150:] {
		if r.Kind == KindLevelShift {
			first = i
			break
		}
		if !r.IsAnomaly || r.Kind != KindSpike {
			t.Errorf("sample %d of the new level: %+v; want a spike until the shift is confirmed", i, r)
		}
	}
	if first < 0 || first > 6 {
		t.Fatalf("level shift flagged %d samples after it, want within 6", first)
	}
	for i, r := range res[150+first+1:] {
		if r.IsAnomaly {
			t.Errorf("sample %d after the confirmed shift flagged: %+v", i+first+1, r)
		}
	}
	last := res[len(res)-1].Baseline
	if math.Abs(last.Mean-30) > 0.5 || math.Abs(last.Median-30) > 0.5 || math.Abs(last.Std-1) > 0.3 {
		t.Errorf("baseline at the end: %+v, want mean and median ≈ 30, std ≈ 1", last)
	}
}

// When the noise grows for good, the detectors adapt within a window.
func TestNoiseScaleChangeRecovers(t *testing.T) {
	v := noise(5, 1500, 0, 1)
	for i := 500; i < len(v); i++ {
		v[i] *= 8
	}
	res := stream(t, New(Config{}), "d", v, 100, "")
	late := 0
	for _, r := range res[700:] {
		if r.IsAnomaly {
			late++
		}
	}
	if late > 8 {
		t.Errorf("%d of 800 samples flagged long after the noise grew 8×; want <= 1%%", late)
	}
}

// A batch gives exactly what the same samples sent one by one give.
func TestBatchEqualsSingles(t *testing.T) {
	l := genEvents(rand.New(rand.NewPCG(7, 1)), 1500)
	single := stream(t, New(Config{}), "d", l.values, 1, "")
	batch := stream(t, New(Config{}), "d", l.values, 1500, "")
	for i := range single {
		single[i].Sensor = ""
		a, _ := json.Marshal(single[i])
		b, _ := json.Marshal(batch[i])
		if string(a) != string(b) {
			t.Fatalf("sample %d:\nsingle %s\nbatch  %s", i, a, b)
		}
	}
	out, err := infer(t, New(Config{}), "d", `{"sensor":"s","values":`+mustJSON(l.values)+`}`, "")
	if err != nil {
		t.Fatal(err)
	}
	b := out.(BatchResult)
	n := 0
	for _, r := range b.Results {
		if r.IsAnomaly {
			n++
		}
	}
	if b.Sensor != "s" || b.Anomalies != n || n == 0 {
		t.Errorf("batch sensor %q anomalies %d, counted %d", b.Sensor, b.Anomalies, n)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// Series are keyed on device and sensor.
func TestSeriesAreSeparate(t *testing.T) {
	m := New(Config{})
	for range 25 {
		one(t, m, "d1", `{"sensor":"t","value":1}`)
	}
	if r := one(t, m, "d2", `{"sensor":"t","value":1}`); r.N != 1 {
		t.Errorf("another device shares the series: n = %d", r.N)
	}
	if r := one(t, m, "d1", `{"sensor":"u","value":1}`); r.N != 1 {
		t.Errorf("another sensor shares the series: n = %d", r.N)
	}
	if m.Len() != 3 {
		t.Errorf("Len() = %d, want 3", m.Len())
	}
}

// A sample whose ts is not later than the last is a duplicate or out of
// order: answered stale, not learned from.
func TestStaleTimestamps(t *testing.T) {
	m := New(Config{})
	for i, c := range []struct {
		ts    string
		stale bool
		n     int64
	}{
		{`1000`, false, 1},
		{`2000`, false, 2},
		{`2000`, true, 2}, // redelivered
		{`1500`, true, 2}, // late
		{`"1970-01-01T00:00:03Z"`, false, 3},
		{``, false, 4}, // no ts: taken in arrival order
		{`2500`, true, 4},
	} {
		in := `{"sensor":"t","value":1}`
		if c.ts != "" {
			in = `{"sensor":"t","value":1,"ts":` + c.ts + `}`
		}
		r := one(t, m, "d", in)
		if r.Stale != c.stale || r.N != c.n {
			t.Errorf("sample %d (ts %s): stale %v n %d, want %v %d", i, c.ts, r.Stale, r.N, c.stale, c.n)
		}
	}
	out, err := infer(t, m, "d", `{"sensor":"t","values":[1,2,3],"ts":[4000,3500,5000]}`, "")
	if err != nil {
		t.Fatal(err)
	}
	b := out.(BatchResult)
	if b.Results[0].Stale || !b.Results[1].Stale || b.Results[2].Stale || b.Results[2].N != 6 {
		t.Errorf("batch with one late sample: %+v", b.Results)
	}
}

// Params change the decision on the same evidence.
func TestParamsThresholds(t *testing.T) {
	v := noise(8, 60, 0, 1)
	decide := func(params string) Result {
		m := New(Config{})
		stream(t, m, "d", v, len(v), "")
		out, err := infer(t, m, "d", `{"sensor":"s","value":0}`, "")
		if err != nil {
			t.Fatal(err)
		}
		b := out.(Result).Baseline
		x := b.Mean + 4.5*b.Std
		out, err = infer(t, m, "d", `{"sensor":"s","value":`+ftoa(x)+`}`, params)
		if err != nil {
			t.Fatal(err)
		}
		return out.(Result)
	}
	if r := decide(`{"mad":50}`); !r.IsAnomaly || r.Method != MethodEWMA || math.Abs(r.Scores.EWMAZ-4.5/4) > 0.05 {
		t.Errorf("4.5σ with z 4: %+v", r)
	}
	if r := decide(`{"z":5,"mad":50}`); r.IsAnomaly || math.Abs(r.Scores.EWMAZ-4.5/5) > 0.05 || r.Method != MethodNone {
		t.Errorf("4.5σ with z 5: %+v", r)
	}
}

// A perfectly constant series, and values at the limits, give finite,
// encodable results.
func TestDegenerateSeries(t *testing.T) {
	m := New(Config{})
	for range 30 {
		if r := one(t, m, "d", `{"sensor":"t","value":5}`); r.IsAnomaly {
			t.Fatalf("constant series flagged: %+v", r)
		}
	}
	r := one(t, m, "d", `{"sensor":"t","value":5.1}`)
	if !r.IsAnomaly || math.IsInf(r.Score, 0) {
		t.Errorf("a change after a constant run: %+v", r)
	}
	vals := make([]float64, 200)
	for i := range vals {
		vals[i] = MaxAbsValue * float64(1-2*(i%2))
		if i%7 == 0 {
			vals[i] = 0
		}
	}
	out, err := infer(t, m, "d", `{"sensor":"x","values":`+mustJSON(vals)+`}`, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(out); err != nil {
		t.Errorf("results for ±MaxAbsValue do not encode: %v", err)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Errorf("result does not encode: %v", err)
	}
}

func TestContextCanceled(t *testing.T) {
	m := New(Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := m.Infer(ctx, inference.Request{Device: "d", Input: json.RawMessage(`{"sensor":"t","value":1}`)})
	if !errors.Is(err, context.Canceled) || inference.IsInvalidInput(err) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if m.Len() != 0 {
		t.Errorf("a canceled request created a series")
	}
}

func TestMedianMAD(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	mid := func(s []float64) float64 {
		s = slices.Clone(s)
		slices.Sort(s)
		n := len(s)
		return (s[(n-1)/2] + s[n/2]) / 2
	}
	for n := 1; n <= Window; n++ {
		for trial := range 50 {
			a := make([]float64, n)
			for i := range a {
				if trial%2 == 0 {
					a[i] = float64(r.IntN(7)) // many ties
				} else {
					a[i] = r.NormFloat64()
				}
			}
			wantMed := mid(a)
			dev := make([]float64, n)
			for i, v := range a {
				dev[i] = math.Abs(v - wantMed)
			}
			wantMAD := mid(dev)
			med, mad := medianMAD(slices.Clone(a))
			if med != wantMed || math.Abs(mad-wantMAD) > 1e-12 {
				t.Fatalf("medianMAD(%v) = %g, %g; want %g, %g", a, med, mad, wantMed, wantMAD)
			}
		}
	}
}

// The sorted index of the window stays the sorted unflagged samples
// through pushes, evictions, spikes and relearns.
func TestWindowOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 12))
	var s series
	for step := range 5000 {
		if step%397 == 396 {
			s.relearn(1 + r.IntN(Window+5))
		} else {
			s.push(float64(r.IntN(50)), r.IntN(5) == 0)
		}
		var want, got []float64
		for j := range s.count {
			i := (s.head + j) % Window
			if s.flagged&(1<<i) == 0 {
				want = append(want, s.win[i])
			}
		}
		slices.Sort(want)
		for _, i := range s.order[:s.nord] {
			got = append(got, s.win[i])
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: order gives %v, want %v", step, got, want)
		}
	}
}

// TestForget: the series of forgotten devices start over (warming up);
// other devices keep theirs.
func TestForget(t *testing.T) {
	m := New(Config{})
	for i := range 30 {
		for _, d := range []string{"a", "b"} {
			one(t, m, d, fmt.Sprintf(`{"sensor":"t","value":%d}`, 20+i%2))
		}
	}
	if n := m.Forget(func(d string) bool { return d == "a" }); n != 1 {
		t.Fatalf("forgot %d series, want 1", n)
	}
	if r := one(t, m, "a", `{"sensor":"t","value":20}`); !r.WarmingUp || r.N != 1 {
		t.Errorf("forgotten device: %+v", r)
	}
	if r := one(t, m, "b", `{"sensor":"t","value":20}`); r.WarmingUp || r.N != 31 {
		t.Errorf("kept device: %+v", r)
	}
}
