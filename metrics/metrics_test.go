package metrics

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// series returns the label sets of a metric family, by name.
func series(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + ","
			}
			out[key] = m.GetCounter().GetValue()
		}
	}
	return out
}

// TestLabelsAreBounded: model names and API versions that come from
// devices' topics are label values only when the node knows them, so a
// device inventing names cannot grow the series without bound.
func TestLabelsAreBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.SetModels(func(name string) bool { return name == "anomaly" })
	for i := range 100 {
		m.Request("v1", fmt.Sprint("m", i), 404)
		m.Request(fmt.Sprint("v", i+3), "anomaly", 404)
		m.RemoteRequest(fmt.Sprint("x", i), fmt.Sprint("y", i), 200)
	}
	m.Request("v2", "anomaly", 200)
	req := series(t, reg, "mqttinfer_requests_total")
	if len(req) != 3 {
		t.Errorf("request series %v, want 3 (v1/other, other/anomaly, v2/anomaly)", req)
	}
	if v := req["model=other,status=404,version=v1,"]; v != 100 {
		t.Errorf("unknown models counted %v times, want 100 (%v)", v, req)
	}
	if rem := series(t, reg, "mqttinfer_remote_requests_total"); len(rem) != 1 {
		t.Errorf("remote series %v, want 1", rem)
	}
}
