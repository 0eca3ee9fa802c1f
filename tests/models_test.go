package tests

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"testing"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/service"
)


// TestVADOverMQTT streams real synthesised speech (espeak-ng, resampled to
// 16 kHz by sox) in 1 s chunks from one device: the model carries the
// device's state across requests and finds the speech; digital silence from
// another device has none.
func TestVADOverMQTT(t *testing.T) {
	requireTool(t, "/usr/bin/espeak-ng", "espeak-ng")
	requireTool(t, "/usr/bin/sox", "sox")
	cfg := testConfig(t)
	cfg.Throttle.Enabled = false
	svc := startService(t, cfg)
	requireModel(t, svc, "vad")
	speech := synthSpeech(t, "the meter in the basement reads four thousand five hundred and twenty one kilowatt hours")

	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "mic-1")
	const chunk = 16000 * 2 // 1 s of int16
	var segments int
	var lastEnd float64
	for off := 0; off < len(speech); off += chunk {
		end := min(off+chunk, len(speech))
		d.request("vad", map[string]any{"input": map[string]any{"pcm16": base64.StdEncoding.EncodeToString(speech[off:end])}})
		r := d.replyStatus(200)
		var out struct {
			OffsetMS float64 `json:"offset_ms"`
			Speech   bool    `json:"speech"`
			Segments []struct {
				StartMS float64 `json:"start_ms"`
				EndMS   float64 `json:"end_ms"`
			} `json:"segments"`
		}
		if err := json.Unmarshal(r.Output, &out); err != nil {
			t.Fatal(err)
		}
		if want := float64(off) / 32; out.OffsetMS != want {
			t.Errorf("chunk at %d: offset_ms %v, want %v (state not carried?)", off, out.OffsetMS, want)
		}
		segments += len(out.Segments)
		for _, s := range out.Segments {
			lastEnd = s.EndMS
		}
	}
	if segments == 0 || lastEnd < 500 {
		t.Errorf("no speech found in %d ms of speech (segments %d, last end %v)", len(speech)/32, segments, lastEnd)
	}

	quiet := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "mic-2")
	quiet.request("vad", map[string]any{"input": map[string]any{"pcm16": base64.StdEncoding.EncodeToString(make([]byte, chunk))}})
	var out struct {
		Speech bool `json:"speech"`
	}
	r := quiet.replyStatus(200)
	if err := json.Unmarshal(r.Output, &out); err != nil || out.Speech {
		t.Errorf("speech found in silence: %s", r.Output)
	}
	// Bad audio is a clear 422.
	quiet.request("vad", map[string]any{"id": "odd", "input": map[string]any{"pcm16": base64.StdEncoding.EncodeToString([]byte{1, 2, 3})}})
	if r := quiet.replyStatus(422); r.Error.Type != api.InvalidInput || r.ID != "odd" {
		t.Errorf("odd-length pcm16: %+v", r.Error)
	}
}

// requireModel skips when a model is unavailable on this node (no ONNX
// Runtime or weights), unless the Makefile asked for every real-data
// dependency: then it fails.
func requireModel(t *testing.T, svc *service.Service, name string) {
	t.Helper()
	m, ok := svc.Models().Get(name)
	if !ok {
		t.Fatalf("model %s is not registered", name)
	}
	if why := m.Info().Unavailable; why != "" {
		if os.Getenv("MQTTINFER_REQUIRE_TESTDATA") != "" {
			t.Fatalf("model %s unavailable: %s (run make models)", name, why)
		}
		t.Skipf("model %s unavailable: %s", name, why)
	}
}

// synthSpeech speaks text with espeak-ng and returns 16 kHz mono int16
// little-endian samples (sox resamples).
func synthSpeech(t *testing.T, text string) []byte {
	t.Helper()
	esp := exec.Command("espeak-ng", "--stdout", text)
	sox := exec.Command("sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", "-")
	pipe, err := esp.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	sox.Stdin = pipe
	var out, errb bytes.Buffer
	sox.Stdout, sox.Stderr = &out, &errb
	if err := sox.Start(); err != nil {
		t.Fatal(err)
	}
	if err := esp.Run(); err != nil {
		t.Fatalf("espeak-ng: %v", err)
	}
	if err := sox.Wait(); err != nil {
		t.Fatalf("sox: %v: %s", err, errb.String())
	}
	if out.Len() < 16000 {
		t.Fatalf("only %d bytes of speech", out.Len())
	}
	return out.Bytes()
}
