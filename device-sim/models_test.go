package devicesim

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/mqttinfer/mqttinfer/topics"
)

const testCatalog = `{"models":[
 {"name":"anomaly","version":"1","description":"telemetry anomaly detection","cost":1,"streaming":false,"input_schema":{"type":"object"}},
 {"name":"vad","version":"5","description":"voice activity (Silero VAD v5)","cost":2,"streaming":true,"unavailable":"ONNX Runtime not found"}]}`

func TestModelsTable(t *testing.T) {
	b := startBroker(t)
	if err := b.srv.Publish(topics.Models("fleet/a", "v1"), []byte(testCatalog), true, 0); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Models(t.Context(), ModelsOptions{Broker: b.addr, Prefix: "fleet/a"}, &out); err != nil {
		t.Fatalf("Models: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows:\n%s", out.String())
	}
	want := [][]string{
		{"NAME", "VERSION", "COST", "STREAMING", "STATUS", "DESCRIPTION"},
		{"anomaly", "1", "1", "no", "available", "telemetry anomaly detection"},
		{"vad", "5", "2", "yes", "unavailable: ONNX Runtime not found", "voice activity (Silero VAD v5)"},
	}
	// Columns are aligned: every cell starts at the header's column.
	for i, row := range want {
		col := 0
		for j, cell := range row {
			at := strings.Index(lines[i][col:], cell)
			if at < 0 {
				t.Fatalf("row %d lacks %q:\n%s", i, cell, out.String())
			}
			start := col + at
			if hdr := strings.Index(lines[0], want[0][j]); start != hdr {
				t.Errorf("row %d: %q starts at column %d, header %q at %d:\n%s", i, cell, start, want[0][j], hdr, out.String())
			}
			col = start + len(cell)
		}
	}

	out.Reset()
	if err := Models(t.Context(), ModelsOptions{Broker: b.addr, Prefix: "fleet/a", JSON: true}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != testCatalog+"\n" {
		t.Errorf("JSON: got %q", out.String())
	}
}

func TestModelsNoCatalog(t *testing.T) {
	b := startBroker(t)
	// A catalog under another version does not count.
	if err := b.srv.Publish(topics.Models("mqttinfer", "v2"), []byte(testCatalog), true, 0); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := Models(t.Context(), ModelsOptions{Broker: b.addr, Timeout: 200 * time.Millisecond}, &out)
	want := `models: no catalog on mqttinfer/v1/models within 200ms: is the service running with prefix "mqttinfer"?`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
	if out.Len() != 0 {
		t.Errorf("printed %q", out.String())
	}

	err = Models(t.Context(), ModelsOptions{Broker: closedAddr(t)}, &out)
	if err == nil || !strings.Contains(err.Error(), "is the service or broker running there?") {
		t.Errorf("no broker: err = %v", err)
	}
}
