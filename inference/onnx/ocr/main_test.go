package ocr

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/image/font"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// initErr is why the runtime could not be initialised in TestMain, if so.
var initErr error

func TestMain(m *testing.M) {
	lib, err := onnx.Library(modelsDir())
	if err == nil {
		err = onnx.Init(lib)
	}
	initErr = err
	goleak.VerifyTestMain(m)
}

// modelsDir is where `make models` puts the runtime and the model files.
func modelsDir() string {
	if d := os.Getenv("MQTTINFER_MODELS_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", ".cache", "models")
}

// required reports whether missing test data is a failure, not a skip.
func required() bool {
	return os.Getenv("MQTTINFER_REQUIRE_TESTDATA") != "" && runtime.GOOS == "linux"
}

// missing skips t, or fails it when the test data is required.
func missing(tb testing.TB, err error) {
	tb.Helper()
	if required() {
		tb.Fatal(err)
	}
	tb.Skip(err)
}

var (
	shared     *Model
	sharedErr  error
	sharedOnce sync.Once
)

// model returns the model loaded once for the whole test binary with the
// default config.
func model(tb testing.TB) *Model {
	tb.Helper()
	if initErr != nil {
		missing(tb, initErr)
	}
	sharedOnce.Do(func() { shared, sharedErr = New(Config{Dir: modelsDir()}) })
	if sharedErr != nil {
		if errors.Is(sharedErr, os.ErrNotExist) || errors.Is(sharedErr, onnx.ErrUnavailable) {
			missing(tb, sharedErr)
		}
		tb.Fatal(sharedErr)
	}
	return shared
}

// infer runs m on the encoded image b.
func infer(tb testing.TB, m *Model, b []byte) Result {
	tb.Helper()
	in, _ := json.Marshal(map[string]string{"image": base64.StdEncoding.EncodeToString(b)})
	out, err := m.Infer(context.Background(), inference.Request{Device: "d", Input: in})
	if err != nil {
		tb.Fatal(err)
	}
	return out.(Result)
}

const fontDir = "/usr/share/fonts/truetype/dejavu"

var (
	fontsMu sync.Mutex
	fonts   = map[string]*opentype.Font{}
)

// loadFont parses a DejaVu font (fonts-dejavu-core), skipping tb when absent.
func loadFont(tb testing.TB, name string) *opentype.Font {
	tb.Helper()
	fontsMu.Lock()
	defer fontsMu.Unlock()
	if f := fonts[name]; f != nil {
		return f
	}
	b, err := os.ReadFile(filepath.Join(fontDir, name))
	if err != nil {
		missing(tb, err)
	}
	f, err := opentype.Parse(b)
	if err != nil {
		tb.Fatal(err)
	}
	fonts[name] = f
	return f
}

// scene is a rendered display: lines of text in a font at a size, with
// colours, a margin, and optional noise.
type scene struct {
	font   string
	size   float64 // points at 72 dpi, i.e. pixels per em
	lines  []string
	fg, bg color.RGBA
	noise  int // ± uniform noise per channel, in levels of 255
	seed   uint64
}

// render draws s and returns the image.
func render(tb testing.TB, s scene) *image.RGBA {
	tb.Helper()
	face, err := opentype.NewFace(loadFont(tb, s.font), &opentype.FaceOptions{Size: s.size, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		tb.Fatal(err)
	}
	defer face.Close()
	m := face.Metrics()
	lineH := (m.Height * 13 / 10).Ceil()
	margin := int(s.size)
	wmax := 0
	for _, l := range s.lines {
		wmax = max(wmax, font.MeasureString(face, l).Ceil())
	}
	img := image.NewRGBA(image.Rect(0, 0, wmax+2*margin, len(s.lines)*lineH+2*margin))
	draw.Draw(img, img.Bounds(), image.NewUniform(s.bg), image.Point{}, draw.Src)
	d := font.Drawer{Dst: img, Src: image.NewUniform(s.fg), Face: face}
	for i, l := range s.lines {
		d.Dot = fixed.P(margin, margin+i*lineH+m.Ascent.Ceil())
		d.DrawString(l)
	}
	if s.noise > 0 {
		r := rand.New(rand.NewPCG(s.seed, 7))
		for i := range img.Pix {
			if i%4 == 3 {
				continue
			}
			v := int(img.Pix[i]) + r.IntN(2*s.noise+1) - s.noise
			img.Pix[i] = uint8(min(max(v, 0), 255))
		}
	}
	return img
}

// encodePNG and encodeJPEG encode img.
func encodePNG(tb testing.TB, img image.Image) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(tb testing.TB, img image.Image, quality int) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: quality}); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// pagePath is skimage's scanned page (Debian python3-skimage).
func pagePath(tb testing.TB) string {
	tb.Helper()
	ms, _ := filepath.Glob("/usr/lib/python3*/dist-packages/skimage/data/page.png")
	if len(ms) == 0 {
		missing(tb, errors.New("skimage/data/page.png not found (apt-get install python3-skimage)"))
	}
	return ms[0]
}

var (
	black = color.RGBA{0, 0, 0, 255}
	white = color.RGBA{255, 255, 255, 255}
	lcdBG = color.RGBA{24, 36, 28, 255}
	lcdFG = color.RGBA{170, 240, 190, 255}
)
