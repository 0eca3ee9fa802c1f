package devicesim

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Preparing runs espeak-ng and encodes photos; tests share what they can.
var (
	preparedMu sync.Mutex
	prepared   = map[string]preparedInput{}
)

type preparedInput struct {
	f   InputFunc
	src InputSource
}

// prepareShared is PrepareInput, once per model and variant for the whole
// test binary. variant is "default" (what the machine has), "synthetic", or
// "missing" (the defaults pointed at paths that do not exist, as on a
// machine without espeak-ng, darknet and fonts-dejavu-core).
func prepareShared(t *testing.T, model, variant string) (InputFunc, InputSource) {
	t.Helper()
	preparedMu.Lock()
	defer preparedMu.Unlock()
	key := model + "/" + variant
	if p, ok := prepared[key]; ok {
		return p.f, p.src
	}
	var o InputOptions
	switch variant {
	case "synthetic":
		o.Synthetic = true
	case "missing":
		o = missingDefaults(t)
	}
	f, src, err := PrepareInput(t.Context(), model, o)
	if err != nil {
		t.Fatalf("PrepareInput(%s, %s): %v", model, variant, err)
	}
	t.Logf("%s inputs (%s): %s", model, variant, src.Description)
	prepared[key] = preparedInput{f, src}
	return f, src
}

// missingDefaults are InputOptions whose defaults point where nothing is.
func missingDefaults(t *testing.T) InputOptions {
	nowhere := filepath.Join(os.TempDir(), "devicesim-test-nothing-here")
	if _, err := os.Stat(nowhere); err == nil {
		t.Fatalf("%s exists", nowhere)
	}
	return InputOptions{
		defaultEspeak:   filepath.Join(nowhere, "espeak-ng"),
		defaultPhotoDir: nowhere,
		fontDir:         nowhere,
		FrameSize:       320, // the synthetic frames are tested at 640 already
	}
}

// unlessRace is n, or small under the race detector.
func unlessRace(n, small int) int {
	if raceEnabled {
		return small
	}
	return n
}

// inputJSON runs gen n times and returns the inputs as the simulator
// encodes them.
func inputJSON(t *testing.T, gen Generator, n int) [][]byte {
	t.Helper()
	out := make([][]byte, n)
	for i := range out {
		b, err := json.Marshal(gen())
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > DefaultMaxInputSize {
			t.Errorf("input %d is %d bytes, over %d", i, len(b), DefaultMaxInputSize)
		}
		out[i] = b
	}
	return out
}

// strictBase64 decodes s as standard, padded base64, the encoding the
// models' docs give.
func strictBase64(t *testing.T, what, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		t.Fatalf("%s is not standard base64: %v", what, err)
	}
	return b
}

func TestInputModelsListsMedia(t *testing.T) {
	if got, want := InputModels(), []string{"anomaly", "detect", "ocr", "vad"}; !slices.Equal(got, want) {
		t.Errorf("InputModels() = %v, want %v", got, want)
	}
}

// The same seed gives the same inputs, another seed other ones, and so
// does preparing again: the prepared data is fixed too (the synthetic
// variant, which depends on nothing on the machine).
func TestMediaInputsDeterministic(t *testing.T) {
	for _, model := range []string{"vad", "ocr", "detect"} {
		t.Run(model, func(t *testing.T) {
			o := InputOptions{Synthetic: true, FrameSize: 160}
			f, _, err := PrepareInput(t.Context(), model, o)
			if err != nil {
				t.Fatal(err)
			}
			again, _, err := PrepareInput(t.Context(), model, o)
			if err != nil {
				t.Fatal(err)
			}
			gen := func(f InputFunc, seed uint64) [][]byte {
				return inputJSON(t, f("sim-0001", rand.New(rand.NewPCG(seed, 3))), 12)
			}
			a, b, c := gen(f, 5), gen(again, 5), gen(f, 6)
			if !reflect.DeepEqual(a, b) {
				t.Error("same seed, different inputs")
			}
			if reflect.DeepEqual(a, c) {
				t.Error("different seeds, same inputs")
			}
		})
	}
	// With the machine's data too (espeak-ng, photos, DejaVu), within a run.
	for _, model := range []string{"vad", "ocr", "detect"} {
		f, _ := prepareShared(t, model, "default")
		a := inputJSON(t, f("sim-0001", rand.New(rand.NewPCG(8, 1))), 6)
		b := inputJSON(t, f("sim-0001", rand.New(rand.NewPCG(8, 1))), 6)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: same seed, different inputs", model)
		}
	}
}

func TestPrepareInputOptionErrors(t *testing.T) {
	empty := t.TempDir()
	for _, tt := range []struct {
		model string
		o     InputOptions
		want  string
	}{
		{"nosuchmodel", InputOptions{}, `cannot generate inputs for model "nosuchmodel"`},
		{"vad", InputOptions{AudioChunk: 10 * time.Millisecond}, "at least 32ms"},
		{"vad", InputOptions{AudioChunk: 2 * time.Second}, "over the 61440-byte input limit"},
		{"detect", InputOptions{FrameSize: 16}, "frame size must be between 32 and 4096"},
		{"ocr", InputOptions{OCRWidth: 100}, "ocr width must be between 160 and 1920"},
		{"ocr", InputOptions{MaxInputSize: 1000}, "at least 4096 bytes"},
		{"detect", InputOptions{PhotoDir: empty}, "no *.jpg photos in " + empty},
		{"detect", InputOptions{PhotoDir: filepath.Join(empty, "nope")}, "no photos"},
		{"vad", InputOptions{Espeak: filepath.Join(empty, "espeak-ng")}, "espeak-ng is not at"},
	} {
		_, _, err := PrepareInput(t.Context(), tt.model, tt.o)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("PrepareInput(%s, %+v) err = %v, want one saying %q", tt.model, tt.o, err, tt.want)
		}
	}
}

func TestPrepareInputCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, o := range []InputOptions{{Synthetic: true}, {}} {
		if _, _, err := PrepareInput(ctx, "detect", o); !errors.Is(err, context.Canceled) {
			t.Errorf("detect %+v: err = %v, want context.Canceled", o, err)
		}
	}
	if _, err := os.Stat(defaultEspeak); err == nil {
		if _, _, err := PrepareInput(ctx, "vad", InputOptions{}); err == nil {
			t.Error("vad with espeak-ng and a canceled context: no error")
		}
	}
}

// mediaResponder answers every request on the broker with 200 after
// checking that it is a request the service would take: under the default
// 64 KiB request limit, a valid envelope, and an input the model's
// decoder would read (checked by the caller's check).
type mediaResponder struct {
	srv   *mochi.Server
	check func(input json.RawMessage) error

	mu    sync.Mutex
	seen  int
	sizes []int
	errs  []error
}

func (r *mediaResponder) handle(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
	tp, err := topics.Parse(topics.DefaultPrefix, pk.TopicName)
	if err != nil || tp.Kind != topics.KindRequest {
		return
	}
	req, aerr := api.DecodeRequest(pk.Payload)
	res := api.Result{ID: req.ID, Model: tp.Model, ModelVersion: "test", Status: api.StatusOK}
	switch {
	case len(pk.Payload) > 64<<10:
		err = errors.New("request over 64 KiB")
	case aerr != nil:
		err = aerr
	default:
		err = r.check(req.Input)
	}
	if err != nil {
		res = api.ErrorResult(req.ID, tp.Model, api.Errorf(api.InvalidInput, "%v", err))
	}
	body, _ := json.Marshal(res)
	// Counted before the reply goes out: the run may end as soon as the
	// last reply arrives.
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen++
	r.sizes = append(r.sizes, len(pk.Payload))
	perr := r.srv.Publish(tp.ResultTopic(), body, false, 1)
	for _, e := range []error{err, perr} {
		if e != nil {
			r.errs = append(r.errs, e)
		}
	}
}

// Run sends each model's inputs through a real broker, and each request
// is one the service would take.
func TestRunMediaModels(t *testing.T) {
	b := startBroker(t)
	checks := map[string]func(json.RawMessage) error{
		"vad": func(raw json.RawMessage) error {
			var in AudioInput
			if err := json.Unmarshal(raw, &in); err != nil {
				return err
			}
			pcm, err := base64.StdEncoding.Strict().DecodeString(in.PCM16)
			if err != nil || len(pcm) != 16000 {
				return errors.New("pcm16 is not 8000 base64 samples")
			}
			return nil
		},
		"ocr":    func(raw json.RawMessage) error { _, err := decodeImageInput(raw); return err },
		"detect": func(raw json.RawMessage) error { _, err := decodeImageInput(raw); return err },
	}
	for _, model := range []string{"vad", "ocr", "detect"} {
		t.Run(model, func(t *testing.T) {
			r := &mediaResponder{srv: b.srv, check: checks[model]}
			if err := b.srv.Subscribe(topics.RequestFilter(topics.DefaultPrefix), 2, r.handle); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = b.srv.Unsubscribe(topics.RequestFilter(topics.DefaultPrefix), 2) }()
			rep, err := Run(t.Context(), Options{
				Broker: b.addr, Model: model, Devices: 2, Rate: 50, Requests: 4, QoS: 1,
				Duration: time.Minute, Drain: 10 * time.Second, Seed: 3,
				Inputs: InputOptions{Synthetic: true, FrameSize: 160},
			})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			if errs := errors.Join(r.errs...); errs != nil {
				t.Errorf("requests the service would not take: %v", errs)
			}
			if rep.Sent != 8 || rep.OK != 8 || r.seen != 8 {
				t.Errorf("sent %d, ok %d, responder saw %d; want 8 each\n%s", rep.Sent, rep.OK, r.seen, rep)
			}
			switch {
			case model == "ocr" && (rep.InputFallback || !strings.Contains(rep.Inputs, "the Go fonts")):
				t.Errorf("report does not say the displays are in the Go fonts:\n%s", rep)
			case model != "ocr" && (!rep.InputFallback || !strings.Contains(rep.Inputs, "synthetic") || !strings.Contains(rep.String(), "inputs (!)")):
				t.Errorf("report does not say the inputs are synthetic:\n%s", rep)
			}
			t.Logf("request sizes %v", r.sizes)
		})
	}
}
