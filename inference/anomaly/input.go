package anomaly

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
)

// maxSensorLen is the longest sensor id, in bytes.
const maxSensorLen = 64

// The range of ts as unix milliseconds: years 0001 to 9999, what RFC 3339 can say.
var (
	minTS = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	maxTS = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli()
)

// input is a decoded, validated input: one sample or a batch.
type input struct {
	sensor string
	batch  bool
	values []float64
	ts     []int64 // one per value, or nil when the input gave none
}

var inputFields = []string{"sensor", "value", "values", "ts"}

// decodeInput decodes and validates the whole input before any of it
// touches a series, so an invalid batch changes nothing.
func decodeInput(raw json.RawMessage) (input, error) {
	var in input
	fields, err := object(raw, "input")
	if err != nil {
		return in, err
	}
	for k := range fields {
		if !slices.Contains(inputFields, k) {
			return in, inference.InvalidInput("input: unknown field %q (the fields are sensor, value or values, and ts)", clip(k))
		}
	}

	sraw, ok := fields["sensor"]
	if !ok {
		return in, inference.InvalidInput("input.sensor is required: the sensor id, 1-64 characters of [A-Za-z0-9._-]")
	}
	if k := kind(sraw); k != "string" {
		return in, inference.InvalidInput("input.sensor must be a string, got %s", a(k))
	}
	if err := json.Unmarshal(sraw, &in.sensor); err != nil {
		return in, inference.InvalidInput("input.sensor is not a valid JSON string: %v", err)
	}
	if !validSensor(in.sensor) {
		return in, inference.InvalidInput("input.sensor must be 1-64 characters of [A-Za-z0-9._-], got %q", clip(in.sensor))
	}

	vraw, hasValue := fields["value"]
	vsraw, hasValues := fields["values"]
	traw, hasTS := fields["ts"]
	switch {
	case hasValue && hasValues:
		return in, inference.InvalidInput("input: give either value (one sample) or values (a batch), not both")
	case hasValue:
		x, err := number(vraw, "input.value")
		if err != nil {
			return in, err
		}
		in.values = []float64{x}
		if hasTS {
			if kind(traw) == "array" {
				return in, inference.InvalidInput("input.ts must be one timestamp (unix milliseconds or an RFC 3339 string) with value, got an array; arrays go with values")
			}
			t, err := timestamp(traw, "input.ts")
			if err != nil {
				return in, err
			}
			in.ts = []int64{t}
		}
	case hasValues:
		in.batch = true
		if in.values, err = numbers(vsraw, "input.values"); err != nil {
			return in, err
		}
		if hasTS {
			if in.ts, err = timestamps(traw, "input.ts", len(in.values)); err != nil {
				return in, err
			}
		}
	default:
		return in, inference.InvalidInput("input.value (one sample) or input.values (a batch) is required")
	}
	return in, nil
}

var paramFields = []string{"z", "mad", "cusum_h", "cusum_k"}

// decodeParams returns DefaultParams overridden by the fields of raw.
func decodeParams(raw json.RawMessage) (Params, error) {
	p := DefaultParams
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || string(raw) == "null" {
		return p, nil
	}
	fields, err := object(raw, "params")
	if err != nil {
		return p, err
	}
	for k, v := range fields {
		var dst *float64
		lo, hi := 0.0, 100.0 // exclusive, inclusive
		switch k {
		case "z":
			dst = &p.Z
		case "mad":
			dst = &p.MAD
		case "cusum_h":
			dst, hi = &p.CusumH, 1000
		case "cusum_k":
			dst, lo, hi = &p.CusumK, -1, 10 // 0 is a valid allowance
		default:
			return p, inference.InvalidInput("params: unknown field %q (the fields are %s)", clip(k), strings.Join(paramFields, ", "))
		}
		x, err := number(v, "params."+k)
		if err != nil {
			return p, err
		}
		if lo < 0 {
			if x < 0 || x > hi {
				return p, inference.InvalidInput("params.%s must be in [0, %g], got %g", k, hi, x)
			}
		} else if x <= lo || x > hi {
			return p, inference.InvalidInput("params.%s must be in (0, %g], got %g", k, hi, x)
		}
		*dst = x
	}
	return p, nil
}

// object decodes raw as a JSON object. name is the field for messages.
func object(raw json.RawMessage, name string) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, inference.InvalidInput("%s is required: a JSON object like {\"sensor\": \"temp\", \"value\": 21.5}", name)
	}
	if k := kind(raw); k != "object" {
		return nil, inference.InvalidInput("%s must be a JSON object, got %s", name, a(k))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, inference.InvalidInput("%s is not valid JSON: %v", name, err)
	}
	return m, nil
}

// number parses raw as a finite JSON number within ±MaxAbsValue.
func number(raw []byte, name string) (float64, error) {
	raw = bytes.TrimSpace(raw)
	if k := kind(raw); k != "number" {
		return 0, inference.InvalidInput("%s must be a number, got %s", name, a(k))
	}
	return parseNumber(raw, name)
}

func parseNumber(tok []byte, name string) (float64, error) {
	x, err := strconv.ParseFloat(string(tok), 64)
	if err != nil && !(errors.Is(err, strconv.ErrRange) && x == 0) { // underflow to 0 is fine
		if errors.Is(err, strconv.ErrRange) {
			return 0, inference.InvalidInput("%s is out of range: %s is not a finite number", name, clip(string(tok)))
		}
		return 0, inference.InvalidInput("%s must be a number, got %s", name, clip(string(tok)))
	}
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, inference.InvalidInput("%s must be a finite number, got %s", name, clip(string(tok)))
	}
	if math.Abs(x) > MaxAbsValue {
		return 0, inference.InvalidInput("%s is out of range: |%g| is over %g", name, x, MaxAbsValue)
	}
	return x, nil
}

// numbers parses raw, valid JSON, as an array of 1 to MaxBatch numbers. It
// scans the array itself: encoding/json would silently turn a null element
// into 0.
func numbers(raw []byte, name string) ([]float64, error) {
	raw = bytes.TrimSpace(raw)
	if k := kind(raw); k != "array" {
		return nil, inference.InvalidInput("%s must be an array of numbers, got %s", name, a(k))
	}
	out := make([]float64, 0, min(bytes.Count(raw, []byte{','})+1, MaxBatch))
	i := 1 // past '['
	for {
		i = skipSpace(raw, i)
		if i >= len(raw) || raw[i] == ']' {
			break
		}
		if len(out) == MaxBatch {
			return nil, inference.InvalidInput("%s has more than %d values; split the batch", name, MaxBatch)
		}
		if k := kind(raw[i:]); k != "number" {
			return nil, inference.InvalidInput("%s[%d] must be a number, got %s", name, len(out), a(k))
		}
		j := i
		for j < len(raw) && raw[j] != ',' && raw[j] != ']' && !isSpace(raw[j]) {
			j++
		}
		x, err := strconv.ParseFloat(string(raw[i:j]), 64)
		if err != nil || math.Abs(x) > MaxAbsValue {
			// the slow path, which names the element and lets underflow to 0 pass
			if x, err = parseNumber(raw[i:j], name+"["+strconv.Itoa(len(out))+"]"); err != nil {
				return nil, err
			}
		}
		out = append(out, x)
		i = skipSpace(raw, j)
		if i < len(raw) && raw[i] == ',' {
			i++
		}
	}
	if len(out) == 0 {
		return nil, inference.InvalidInput("%s is empty: give 1 to %d values", name, MaxBatch)
	}
	return out, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// timestamp parses one ts: integer unix milliseconds or an RFC 3339 string.
func timestamp(raw []byte, name string) (int64, error) {
	switch k := kind(raw); k {
	case "number":
		tok := string(bytes.TrimSpace(raw))
		t, err := strconv.ParseInt(tok, 10, 64)
		if err != nil {
			// 1.7325e12 is an integer too
			f, ferr := strconv.ParseFloat(tok, 64)
			if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
				return 0, inference.InvalidInput("%s must be whole unix milliseconds, got %s", name, clip(tok))
			}
			t = int64(f)
		}
		if t < minTS || t > maxTS {
			return 0, inference.InvalidInput("%s is out of range: %d ms is outside years 0001-9999", name, t)
		}
		return t, nil
	case "string":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, inference.InvalidInput("%s is not a valid JSON string: %v", name, err)
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return 0, inference.InvalidInput("%s must be an RFC 3339 time like \"2024-11-25T01:20:00Z\", got %q", name, clip(s))
		}
		if ms := t.UnixMilli(); ms < minTS || ms > maxTS {
			return 0, inference.InvalidInput("%s is out of range: %q is outside years 0001-9999 (UTC)", name, clip(s))
		}
		return t.UnixMilli(), nil
	default:
		return 0, inference.InvalidInput("%s must be unix milliseconds or an RFC 3339 string, got %s", name, a(k))
	}
}

// timestamps parses raw as an array of exactly n timestamps.
func timestamps(raw []byte, name string, n int) ([]int64, error) {
	if k := kind(raw); k != "array" {
		return nil, inference.InvalidInput("%s must be an array with one timestamp per value, got %s", name, a(k))
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, inference.InvalidInput("%s is not a valid JSON array: %v", name, err)
	}
	if len(elems) != n {
		return nil, inference.InvalidInput("%s has %d entries, input.values has %d: give one timestamp per value", name, len(elems), n)
	}
	ts := make([]int64, n)
	for i, e := range elems {
		t, err := timestamp(e, name+"["+strconv.Itoa(i)+"]")
		if err != nil {
			return nil, err
		}
		ts[i] = t
	}
	return ts, nil
}

func validSensor(s string) bool {
	if s == "" || len(s) > maxSensorLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// kind and a name a JSON value's type in messages (see inference.JSONKind).
var (
	kind = inference.JSONKind
	a    = inference.WithArticle
)
