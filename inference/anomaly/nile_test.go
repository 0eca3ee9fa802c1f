package anomaly

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// The Nile series (annual flow at Aswan, 1871–1970, 10⁸ m³) from Debian's
// python3-statsmodels, as installed by apt.
const nileGlob = "/usr/lib/python3*/dist-packages/statsmodels/datasets/nile/nile.csv"

type yearValue struct {
	year  int
	value float64
}

func loadNile(t *testing.T) []yearValue {
	t.Helper()
	paths, _ := filepath.Glob(nileGlob)
	if len(paths) == 0 {
		msg := fmt.Sprintf("Nile data not found at %s: run `apt-get update && apt-get install -y python3-statsmodels`", nileGlob)
		if os.Getenv("MQTTINFER_REQUIRE_TESTDATA") == "" {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	f, err := os.Open(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", paths[0], err)
	}
	if len(rows) < 2 || rows[0][0] != "year" || rows[0][1] != "volume" {
		t.Fatalf("%s: want a year,volume header, got %v", paths[0], rows[:min(1, len(rows))])
	}
	var out []yearValue
	for _, r := range rows[1:] {
		y, err1 := strconv.Atoi(r[0])
		v, err2 := strconv.ParseFloat(r[1], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: bad row %v", paths[0], r)
		}
		out = append(out, yearValue{y, v})
	}
	if len(out) != 100 || out[0].year != 1871 || out[99].year != 1970 {
		t.Fatalf("%s: want 100 years 1871-1970, got %d rows", paths[0], len(out))
	}
	return out
}

func nileRun(t *testing.T, params string) []Result {
	data := loadNile(t)
	m := New(Config{})
	var res []Result
	for _, yv := range data {
		in := fmt.Sprintf(`{"sensor":"flow","value":%g,"ts":"%d-01-01T00:00:00Z"}`, yv.value, yv.year)
		out, err := m.Infer(context.Background(), inference.Request{Device: "aswan", Input: json.RawMessage(in), Params: json.RawMessage(params)})
		if err != nil {
			t.Fatalf("%d: %v", yv.year, err)
		}
		res = append(res, out.(Result))
	}
	return res
}

// The Nile's flow dropped around 1898-1899 (the first Aswan dam; a
// change point every analysis of the series finds). The model must call it
// a level shift within a few years, and nothing in the years before.
func TestNile(t *testing.T) {
	res := nileRun(t, "")
	var shifts []int
	for i, r := range res {
		year := 1871 + i
		if i < Warmup != r.WarmingUp {
			t.Errorf("%d: warming_up %v, want %v", year, r.WarmingUp, i < Warmup)
		}
		if r.IsAnomaly {
			t.Logf("%d: %g flagged %s by %v, score %.2f, baseline mean %.0f std %.0f", year, r.Value, r.Kind, r.Methods, r.Score, r.Baseline.Mean, r.Baseline.Std)
		}
		if r.Kind == KindLevelShift {
			shifts = append(shifts, year)
		}
		if year < 1898 && r.IsAnomaly {
			t.Errorf("%d: flagged %s before the change point", year, r.Kind)
		}
	}
	if len(shifts) == 0 || shifts[0] < 1898 || shifts[0] > 1905 {
		t.Errorf("level shifts flagged in %v; want the first in 1898-1905", shifts)
	}
}
