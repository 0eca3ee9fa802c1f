package anomaly

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// FuzzDecodeInput feeds any bytes to the input decoder alone. It must never
// panic and must fail only with InvalidInput; an input it accepts is a
// valid sensor id with 1 (value) or 1 to MaxBatch (values) finite numbers
// within ±MaxAbsValue, and ts, when given, one per value within years
// 0001-9999. Its own number scanner must read what encoding/json reads: the
// sensor, and the values wherever encoding/json can hold them.
func FuzzDecodeInput(f *testing.F) {
	for _, s := range []string{
		`{"sensor":"temp","value":21.5}`,
		`{"sensor":"temp","value":21.5,"ts":1732500000000}`,
		`{"sensor":"temp","value":21.5,"ts":"2024-11-25T01:20:00.123+01:00"}`,
		`{"sensor":"vib.x","values":[0.01,-0.02,3e-5,1E2],"ts":[1732500000000,1.7325000001e12,"2024-11-25T01:20:00Z",1732500003000]}`,
		`{"sensor":"temp","values":[ 1 , 2 ,3 ]}`, `{"sensor":"temp","values":[1,null]}`, `{"sensor":"temp","values":[]}`,
		`{"sensor":"temp","values":[1e-400,-0,1e100,1.0000000000000001e100]}`, `{"sensor":"temp","value":1e999}`,
		`{"sensor":"temp","value":1,"values":[1]}`, `{"sensor":"temp","values":[1,2],"ts":[1]}`, `{"sensor":"temp","value":1,"ts":[1]}`,
		`{"sensor":"temp","value":1,"ts":-62135596800001}`, `{"sensor":"temp","value":1,"ts":1.5}`, `{"sensor":"temp","value":1,"ts":"0000-01-01T00:00:00Z"}`,
		`{"sensor":"te mp","value":1}`, `{"sensor":"\u0074emp","value":1}`, `{"sensor":1,"value":1}`, `{"value":1}`,
		`{"sensor":"temp","value":"21.5"}`, `{"sensor":"temp","value":1,"unit":"C"}`, `{"sensor":"t","sensor":"u","value":1}`,
		`[]`, `null`, ``, `{"sensor":"temp","values":[[1]]}`, `{"sensor":"temp","values":{"0":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		in, err := decodeInput(json.RawMessage(raw))
		if err != nil {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("%q: error is not InvalidInput: %v", raw, err)
			}
			return
		}
		if !validSensor(in.sensor) {
			t.Fatalf("%q: accepted sensor %q", raw, in.sensor)
		}
		if n := len(in.values); n < 1 || n > MaxBatch || (!in.batch && n != 1) {
			t.Fatalf("%q: accepted %d values (batch %v)", raw, n, in.batch)
		}
		for i, x := range in.values {
			if math.IsNaN(x) || math.IsInf(x, 0) || math.Abs(x) > MaxAbsValue {
				t.Fatalf("%q: value %d is %v", raw, i, x)
			}
		}
		if in.ts != nil && len(in.ts) != len(in.values) {
			t.Fatalf("%q: %d timestamps for %d values", raw, len(in.ts), len(in.values))
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			t.Fatalf("%q: accepted, but encoding/json does not read it as an object", raw)
		}
		tsRaw := []json.RawMessage{m["ts"]}
		if in.batch && in.ts != nil && json.Unmarshal(m["ts"], &tsRaw) != nil {
			t.Fatalf("%q: accepted ts that encoding/json does not read as an array", raw)
		}
		for i, ts := range in.ts {
			lo, hi := minTS, maxTS
			if ts < lo || ts > hi {
				t.Fatalf("%q: ts %d is %d, outside years 0001-9999", raw, i, ts)
			}
		}

		var sensor string
		if json.Unmarshal(m["sensor"], &sensor) != nil || sensor != in.sensor {
			t.Fatalf("%q: sensor %q, encoding/json reads %q", raw, in.sensor, sensor)
		}
		// encoding/json refuses numbers that underflow; where it reads them
		// all, it must read the same.
		if in.batch {
			var values []float64
			if json.Unmarshal(m["values"], &values) == nil && !equalFloats(values, in.values) {
				t.Fatalf("%q: values %v, encoding/json reads %v", raw, in.values, values)
			}
		} else if value := math.NaN(); json.Unmarshal(m["value"], &value) == nil && value != in.values[0] {
			t.Fatalf("%q: value %v, encoding/json reads %v", raw, in.values[0], value)
		}
	})
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
