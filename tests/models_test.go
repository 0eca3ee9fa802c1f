package tests

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/image/font"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

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
	withModels(&cfg)
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
	// Ten seconds of audio in one request fit the default limits.
	quiet.request("vad", map[string]any{"id": "ten", "input": map[string]any{"pcm16": base64.StdEncoding.EncodeToString(make([]byte, 10*chunk))}})
	if r := quiet.replyStatus(200); r.ID != "ten" {
		t.Errorf("10 s of audio: %+v", r)
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

// TestOCROverMQTT: a meter-reading device sends a photo-like PNG of its
// display; the ocr model reads the digits back.
func TestOCROverMQTT(t *testing.T) {
	const fontPath = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
	requireTool(t, fontPath, "fonts-dejavu-core")
	cfg := testConfig(t)
	withModels(&cfg)
	cfg.Throttle.Enabled = false
	svc := startService(t, cfg)
	requireModel(t, svc, "ocr")

	img := renderText(t, fontPath, "004521.7 kWh", 480, 120)
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "meter-7")
	d.request("ocr", map[string]any{"id": "read-1", "input": map[string]any{"image": base64.StdEncoding.EncodeToString(img)}})
	r := d.replyStatus(200)
	var out struct {
		Text  string `json:"text"`
		Lines []struct {
			Text       string  `json:"text"`
			Confidence float64 `json:"confidence"`
		} `json:"lines"`
	}
	if err := json.Unmarshal(r.Output, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.ReplaceAll(out.Text, " ", ""), "004521.7") {
		t.Errorf("read %q, want the reading 004521.7", out.Text)
	}

	// A truncated image is a clear 422, and the worker is still fine after it.
	d.request("ocr", map[string]any{"id": "cut", "input": map[string]any{"image": base64.StdEncoding.EncodeToString(img[:len(img)/2])}})
	if r := d.replyStatus(422); r.Error.Type != api.InvalidInput || r.ID != "cut" {
		t.Errorf("truncated image: %+v", r.Error)
	}
	d.request("ocr", map[string]any{"id": "again", "input": map[string]any{"image": base64.StdEncoding.EncodeToString(img)}})
	d.replyStatus(200)
}

// renderText draws text in black on a light grey w×h PNG with the TrueType
// font at fontPath.
func renderText(t testing.TB, fontPath, text string, w, h int) []byte {
	t.Helper()
	raw, err := os.ReadFile(fontPath)
	if err != nil {
		t.Fatal(err)
	}
	f, err := opentype.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	face, err := opentype.NewFace(f, &opentype.FaceOptions{Size: float64(h) / 2.5, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		t.Fatal(err)
	}
	defer face.Close()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.RGBA{225, 228, 220, 255}), image.Point{}, draw.Src)
	dr := &font.Drawer{Dst: img, Src: image.NewUniform(color.RGBA{20, 20, 20, 255}), Face: face}
	adv := dr.MeasureString(text).Ceil()
	dr.Dot = fixed.P((w-adv)/2, h/2+int(face.Metrics().Ascent.Ceil())/2-4)
	dr.DrawString(text)
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDetectOverMQTT: a camera device sends a real photo nobody here made
// (Debian's darknet ships dog.jpg); the detect model finds the dog and the
// bicycle.
func TestDetectOverMQTT(t *testing.T) {
	const photo = "/usr/share/darknet/data/dog.jpg"
	requireTool(t, photo, "darknet")
	cfg := testConfig(t)
	withModels(&cfg)
	cfg.Throttle.Enabled = false
	svc := startService(t, cfg) // the default limits take a camera frame: the photo is 160 KB, base64 218 KB
	requireModel(t, svc, "detect")
	for _, info := range svc.Models().Catalog().Models {
		if want := map[string]int{"detect": 2 << 20, "ocr": 2 << 20, "vad": 512 << 10, "anomaly": 64 << 10}[info.Name]; want != 0 && info.MaxRequestSize != want {
			t.Errorf("catalog: %s accepts %d bytes, want %d", info.Name, info.MaxRequestSize, want)
		}
	}
	jpg, err := os.ReadFile(photo)
	if err != nil {
		t.Fatal(err)
	}
	d := newDevice(t, svc.MQTTAddr(), cfg.Prefix, "cam-1")
	d.request("detect", map[string]any{"id": "f1", "input": map[string]any{"image": base64.StdEncoding.EncodeToString(jpg)}})
	r := d.replyStatus(200)
	var out struct {
		Detections []struct {
			Label string  `json:"label"`
			Score float64 `json:"score"`
		} `json:"detections"`
	}
	if err := json.Unmarshal(r.Output, &out); err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, det := range out.Detections {
		found[det.Label] = true
	}
	if !found["dog"] || !found["bicycle"] {
		t.Errorf("detections %s: want a dog and a bicycle", r.Output)
	}
	// Not an image: a clear 422.
	d.request("detect", map[string]any{"id": "junk", "input": map[string]any{"image": base64.StdEncoding.EncodeToString([]byte("GIF89a not really"))}})
	if r := d.replyStatus(422); r.Error.Type != api.InvalidInput {
		t.Errorf("junk image: %+v", r.Error)
	}
}
