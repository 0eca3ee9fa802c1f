package devicesim

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gobold"
	"golang.org/x/image/font/gofont/gomedium"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"
)

// The displays an ocr device shows.
const (
	meterDisplay      = iota // electricity meter: "004521.7 kWh", counting up
	thermostatDisplay        // room thermostat: "21.5°C", drifting to its set point
	clockDisplay             // clock: "12:45", a minute a reading
	numDisplays
)

// displayTemplates are the widest readings of each display, to size the
// font so that every reading fits.
var displayTemplates = [numDisplays]string{"000000.0 kWh", "00.0°C", "00:00"}

const (
	ocrNoiseSeed = 0x0c7
	// ocrBlurShare of the frames are slightly out of focus.
	ocrBlurShare = 0.25
	// ocrMinWidth..ocrMaxWidth is the width a device picks when
	// InputOptions.OCRWidth is 0.
	ocrMinWidth, ocrMaxWidth = 320, 640
)

// displayStyle is how a display looks.
type displayStyle int

const (
	styleLight      displayStyle = iota // black on light grey: a printed or mechanical counter
	styleReflective                     // dark segments on a grey-green reflective LCD
	styleGreen                          // green on a dark, back-lit LCD
	styleWhite                          // white on a dark, back-lit LCD
)

// ocrFonts are the fonts the displays are drawn in, parsed once and
// shared: an sfnt font is safe to use from many faces at once. DejaVu Sans
// (Debian's fonts-dejavu-core) when it is there, as its zero is a plain
// oval like a display's; the Go fonts, embedded, otherwise (their zero is
// slashed).
type ocrFonts struct {
	name                     string
	regular, bold, condensed *opentype.Font
}

const defaultFontDir = "/usr/share/fonts/truetype/dejavu"

// loadOCRFonts parses the DejaVu fonts of dir, or the Go fonts when dir
// does not have them or dir is "".
func loadOCRFonts(dir string) (*ocrFonts, error) {
	dejavu := &ocrFonts{name: "DejaVu Sans"}
	err := errors.New("no font directory")
	for _, f := range []struct {
		dst  **opentype.Font
		file string
	}{{&dejavu.regular, "DejaVuSans.ttf"}, {&dejavu.bold, "DejaVuSans-Bold.ttf"}, {&dejavu.condensed, "DejaVuSansCondensed-Bold.ttf"}} {
		if dir == "" {
			break
		}
		var b []byte
		if b, err = os.ReadFile(filepath.Join(dir, f.file)); err != nil {
			break
		}
		if *f.dst, err = opentype.Parse(b); err != nil {
			break
		}
	}
	if err == nil {
		return dejavu, nil
	}
	gofonts := &ocrFonts{name: "the Go fonts"}
	if dir != "" {
		gofonts.name += " (no DejaVu Sans in " + dir + ")"
	}
	for _, f := range []struct {
		dst  **opentype.Font
		name string
		ttf  []byte
	}{{&gofonts.regular, "Go Regular", goregular.TTF}, {&gofonts.bold, "Go Bold", gobold.TTF}, {&gofonts.condensed, "Go Medium", gomedium.TTF}} {
		if *f.dst, err = opentype.Parse(f.ttf); err != nil {
			return nil, fmt.Errorf("parsing the embedded %s font: %w", f.name, err)
		}
	}
	return gofonts, nil
}

// ocrInputs prepares the fonts and the noise every ocr device renders with.
func ocrInputs(_ context.Context, o InputOptions) (InputFunc, InputSource, error) {
	dir := o.fontDir
	if o.Synthetic {
		dir = "" // the same fonts on every machine
	}
	fonts, err := loadOCRFonts(dir)
	if err != nil {
		return nil, InputSource{}, err
	}
	tile := newNoiseTile(rand.New(rand.NewPCG(ocrNoiseSeed, 0)), 509, 211) // prime sides: no visible repeats
	size := "320x96 to 640x160"
	if o.OCRWidth != 0 {
		size = fmt.Sprintf("%dx%d", o.OCRWidth, ocrHeight(o.OCRWidth))
	}
	src := InputSource{Description: "meter and display readings rendered in " + fonts.name + ": electricity meters (004521.7 kWh, counting up), thermostats (21.5°C), clocks (12:45); " +
		size + ", black on grey or LCD-like; camera JPEGs (quality 85) with sensor noise and clean PNG screen captures, 1 in 4 slightly blurred"}
	return func(_ string, rng *rand.Rand) Generator {
		d, err := newDisplay(fonts, tile, o, rng)
		if err != nil { // only if a parsed font cannot make a face: a bug
			o.Logger.Error("ocr input: cannot render", "err", err)
			return func() any { return ImageInput{} }
		}
		return func() any {
			in, err := d.next()
			if err != nil {
				o.Logger.Error("ocr input: cannot encode", "err", err)
			}
			return in
		}
	}, src, nil
}

// ocrHeight is the height of an ocr image of width w: 96 at 320, 160 at 640.
func ocrHeight(w int) int { return w/5 + 32 }

// display is one ocr device: a display whose reading changes between
// requests, photographed by a small camera.
type display struct {
	rng   *rand.Rand
	tile  *noiseTile
	limit int

	kind      int
	style     displayStyle
	w, h      int
	face      font.Face
	bg, fg    color.RGBA
	png       bool    // PNG rather than JPEG
	noise     float64 // σ of the sensor noise, 8-bit levels
	light     float64 // left-to-right illumination slope
	textW     int     // width of the template, pixels
	capHeight int

	kwh              float64
	temp, setPoint   float64
	minutes          int
	text             string // the reading of the last frame
	lastW, lastH     int    // size of the last frame
	lastPNG, lastBlr bool
}

func newDisplay(fonts *ocrFonts, tile *noiseTile, o InputOptions, rng *rand.Rand) (*display, error) {
	d := &display{rng: rng, tile: tile, limit: o.MaxInputSize, kind: rng.IntN(numDisplays)}
	d.w = o.OCRWidth
	if d.w == 0 {
		d.w = ocrMinWidth + rng.IntN(ocrMaxWidth-ocrMinWidth+1)
	}
	d.h = ocrHeight(d.w)
	r := rng.Float64()
	var f *opentype.Font
	switch d.kind {
	case meterDisplay:
		f = pickFont(rng, fonts.bold, fonts.condensed)
		d.style = pick(r, styleLight, 0.7, styleGreen)
		d.kwh = 500 + 60000*rng.Float64()
	case thermostatDisplay:
		f = pickFont(rng, fonts.bold, fonts.condensed, fonts.regular)
		d.style = pick(r, styleReflective, 0.5, pick((r-0.5)*2, styleWhite, 0.5, styleLight))
		d.setPoint = 18 + 0.5*float64(rng.IntN(13))
		d.temp = d.setPoint - 3 + 6*rng.Float64()
	default:
		f = pickFont(rng, fonts.regular, fonts.bold)
		d.style = pick(r, styleGreen, 0.4, pick((r-0.4)/0.6, styleWhite, 0.5, styleLight))
		d.minutes = rng.IntN(24 * 60)
	}
	u := func(lo, hi int) uint8 { return uint8(lo + rng.IntN(hi-lo+1)) }
	switch d.style {
	case styleLight:
		g := u(195, 245)
		d.bg = color.RGBA{g, g, g, 255}
		k := u(10, 40)
		d.fg = color.RGBA{k, k, k, 255}
		d.png = rng.IntN(2) == 0
	case styleReflective:
		d.bg = color.RGBA{u(155, 180), u(172, 195), u(148, 165), 255}
		d.fg = color.RGBA{u(25, 45), u(30, 50), u(25, 45), 255}
	case styleGreen:
		d.bg = color.RGBA{u(8, 25), u(22, 40), u(14, 30), 255}
		d.fg = color.RGBA{u(90, 150), u(225, 255), u(110, 170), 255}
	case styleWhite:
		g := u(12, 30)
		d.bg = color.RGBA{g, g, g + 4, 255}
		w := u(220, 245)
		d.fg = color.RGBA{w, w, w, 255}
	}
	d.noise = 2 + 4*rng.Float64()
	if d.png {
		d.noise = 0 // a screen capture: clean (noise would also make the PNG several times larger)
	}
	d.light = -0.12 + 0.24*rng.Float64()

	// Size the font so that the widest reading fills most of the display.
	ref, err := opentype.NewFace(f, &opentype.FaceOptions{Size: 100, DPI: 72, Hinting: font.HintingNone})
	if err != nil {
		return nil, err
	}
	adv := float64(font.MeasureString(ref, displayTemplates[d.kind])) / 64
	digits, _ := font.BoundString(ref, "0123456789") // not Metrics().CapHeight: DejaVu's is 0
	capH := float64(-digits.Min.Y) / 64
	_ = ref.Close()
	fill := 0.84
	if d.style == styleLight && d.kind == meterDisplay {
		fill = 0.76 // inside the counter's window
	}
	size := 100 * min(fill*float64(d.w)/adv, 0.55*float64(d.h)/capH)
	if d.face, err = opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull}); err != nil {
		return nil, err
	}
	d.textW = int(math.Ceil(adv * size / 100))
	d.capHeight = int(math.Round(capH * size / 100))
	return d, nil
}

func pickFont(rng *rand.Rand, fonts ...*opentype.Font) *opentype.Font {
	return fonts[rng.IntN(len(fonts))]
}

// pick returns a when r < p, else b.
func pick(r float64, a displayStyle, p float64, b displayStyle) displayStyle {
	if r < p {
		return a
	}
	return b
}

// reading advances the display's reading to the next request's and
// returns it as displayed.
func (d *display) reading() string {
	switch d.kind {
	case meterDisplay: // a quarter of an hour of a household's use
		d.kwh += 0.05 + 0.5*d.rng.Float64()
		if d.kwh >= 999999.95 {
			d.kwh = 0
		}
		return fmt.Sprintf("%08.1f kWh", d.kwh)
	case thermostatDisplay:
		if d.rng.Float64() < 0.05 {
			d.setPoint = 18 + 0.5*float64(d.rng.IntN(13))
		}
		d.temp += 0.15*(d.setPoint-d.temp) + 0.1*d.rng.NormFloat64()
		return fmt.Sprintf("%.1f°C", d.temp)
	default:
		d.minutes = (d.minutes + 1) % (24 * 60)
		return fmt.Sprintf("%02d:%02d", d.minutes/60, d.minutes%60)
	}
}

// next renders the next reading and encodes it.
func (d *display) next() (ImageInput, error) {
	d.text = d.reading()
	img := d.render(d.text)
	d.lastBlr = d.rng.Float64() < ocrBlurShare
	if d.lastBlr {
		img = blur3(img)
	}
	var (
		b   []byte
		err error
	)
	d.lastPNG = false
	if d.png {
		b, err = encodePNG(grayOf(img))
		d.lastPNG = err == nil && imageInputSize(len(b)) <= d.limit
	}
	if !d.lastPNG {
		b, _, _, err = fitJPEG(img, d.limit, 0)
	}
	if err != nil {
		return ImageInput{}, err
	}
	return ImageInput{Image: imageBase64(b)}, nil
}

// render draws text on the display, a few pixels off centre, lit a little
// unevenly, with sensor noise.
func (d *display) render(text string) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, d.w, d.h))
	row := img.Pix[:4*d.w]
	for x := range d.w {
		f := 1 + d.light*(float64(x)/float64(d.w)-0.5)
		row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = clamp8(float64(d.bg.R)*f), clamp8(float64(d.bg.G)*f), clamp8(float64(d.bg.B)*f), 255
	}
	for y := 1; y < d.h; y++ {
		copy(img.Pix[y*img.Stride:], row)
	}
	if d.style == styleLight && d.kind == meterDisplay { // the counter's window
		border := max(2, d.h/40)
		dark := color.RGBA{d.bg.R / 2, d.bg.G / 2, d.bg.B / 2, 255}
		in := image.Rect(d.w/24, d.h/8, d.w-d.w/24, d.h-d.h/8)
		for _, r := range []image.Rectangle{
			{in.Min, image.Pt(in.Max.X, in.Min.Y+border)}, {image.Pt(in.Min.X, in.Max.Y-border), in.Max},
			{in.Min, image.Pt(in.Min.X+border, in.Max.Y)}, {image.Pt(in.Max.X-border, in.Min.Y), in.Max},
		} {
			fillRect(img, r, dark)
		}
	}
	jx, jy := d.w/50+1, d.h/30+1
	dr := font.Drawer{
		Dst:  img,
		Src:  image.NewUniform(d.fg),
		Face: d.face,
		Dot: fixed.P(
			(d.w-d.textW)/2+d.rng.IntN(2*jx+1)-jx,
			(d.h+d.capHeight)/2+d.rng.IntN(2*jy+1)-jy,
		),
	}
	dr.DrawString(text)
	if d.noise > 0 {
		d.tile.add(img, d.noise, d.rng)
	}
	d.lastW, d.lastH = d.w, d.h
	return img
}
