package devicesim

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // photos
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	xdraw "golang.org/x/image/draw"
)

const (
	defaultFrameSize = 640
	defaultPhotoDir  = "/usr/share/darknet/data"
	// frameVariants is how many frames each scene has: the photo as it is
	// and croppings of it at other brightnesses, as a camera's frames differ.
	frameVariants = 6
	// framesSeed fixes the variants, so that every run has the same frames
	// and a device's frames depend only on its seed.
	framesSeed = 0xca3e4a
	// A camera stays on a scene for sceneMin..sceneMax frames.
	sceneMin, sceneMax = 5, 20
	// maxPhotos bounds how many photos of a directory are used.
	maxPhotos = 32
	// maxPhotoPixels skips photos too big to decode cheaply.
	maxPhotoPixels = 40 << 20
)

// scene is the frames of one scene, as input JSON-ready base64 JPEGs.
type scene struct {
	name   string
	frames []string
}

// detectInputs prepares the camera frames: the photos of a directory
// (darknet's sample photos by default) when there are any, synthetic
// street and field scenes otherwise. Every frame is encoded once, here.
func detectInputs(ctx context.Context, o InputOptions) (InputFunc, InputSource, error) {
	var (
		photos []namedImage
		why    string // why the frames are synthetic
	)
	switch {
	case o.Synthetic:
		why = "synthetic inputs asked for"
	case o.PhotoDir != "":
		var err error
		if photos, err = loadPhotos(ctx, o.PhotoDir); err != nil {
			return nil, InputSource{}, err
		}
	default:
		var err error
		if photos, err = loadPhotos(ctx, o.defaultPhotoDir); err != nil {
			if ctx.Err() != nil {
				return nil, InputSource{}, err
			}
			why = err.Error()
		}
	}
	var render []func(v int, rng *rand.Rand) *image.RGBA
	var names []string
	if photos != nil {
		for _, p := range photos {
			names = append(names, p.name)
			render = append(render, func(v int, rng *rand.Rand) *image.RGBA { return photoFrame(p.img, v, rng, o.FrameSize) })
		}
	} else {
		w, h := o.FrameSize, o.FrameSize*3/4
		for s := range syntheticScenes {
			names = append(names, syntheticScenes[s].name)
			render = append(render, func(v int, rng *rand.Rand) *image.RGBA { return syntheticFrame(s, v, w, h, rng) })
		}
	}
	scenes, stats, err := encodeScenes(ctx, names, render, o.MaxInputSize)
	if err != nil {
		return nil, InputSource{}, err
	}
	desc := "synthetic frames (sky, ground, and car-, person-, animal- and tree-like shapes that move between frames; no real COCO objects)"
	if photos != nil {
		desc = fmt.Sprintf("%d photos from %s (%s)", len(photos), photos[0].dir, strings.Join(names, ", "))
	}
	src := InputSource{Description: fmt.Sprintf("%s; %d frames each, up to %dx%d, JPEG quality %d-%d, %.1f-%.1f KiB of input",
		desc, frameVariants, stats.maxW, stats.maxH, stats.minQ, stats.maxQ, float64(stats.minSize)/1024, float64(stats.maxSize)/1024)}
	if why != "" {
		src.Fallback = true
		src.Description += "; in place of photos: " + why
	}
	return func(_ string, rng *rand.Rand) Generator {
		c := newCamera(scenes, rng)
		return func() any { return ImageInput{Image: c.next()} }
	}, src, nil
}

type namedImage struct {
	dir, name string
	img       image.Image
}

// loadPhotos decodes the *.jpg files of dir, sorted by name.
func loadPhotos(ctx context.Context, dir string) ([]namedImage, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.jpg"))
	if err != nil {
		return nil, fmt.Errorf("photo directory %s: %w", dir, err)
	}
	if len(paths) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("no photos: %w (apt-get install darknet has sample photos)", err)
		}
		return nil, fmt.Errorf("no *.jpg photos in %s", dir)
	}
	slices.Sort(paths)
	paths = paths[:min(len(paths), maxPhotos)]
	var out []namedImage
	var errs []error
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		img, err := decodePhoto(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// RGBA once: scaling from it takes x/image/draw's fast path.
		out = append(out, namedImage{dir: dir, name: strings.TrimSuffix(filepath.Base(p), filepath.Ext(p)), img: toRGBA(img)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no readable photo in %s: %w", dir, errors.Join(errs...))
	}
	return out, nil
}

func decodePhoto(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg, _, err := image.DecodeConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cfg.Width*cfg.Height > maxPhotoPixels {
		return nil, fmt.Errorf("%s: %dx%d is too big to use as a camera frame", path, cfg.Width, cfg.Height)
	}
	if _, err := f.Seek(0, 0); err != nil {
		return nil, err
	}
	img, _, err := image.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}

// photoFrame is frame v of a photo, at most side pixels on its long side:
// v 0 is the whole photo; the others crop 88-100% of each side at a random
// place and change brightness and contrast a little, as a camera's frames
// differ from one moment to the next.
func photoFrame(img image.Image, v int, rng *rand.Rand, side int) *image.RGBA {
	b := img.Bounds()
	crop := b
	if v > 0 {
		cw := b.Dx() * (88 + rng.IntN(13)) / 100
		ch := b.Dy() * (88 + rng.IntN(13)) / 100
		x := b.Min.X + rng.IntN(b.Dx()-cw+1)
		y := b.Min.Y + rng.IntN(b.Dy()-ch+1)
		crop = image.Rect(x, y, x+cw, y+ch)
	}
	w, h := fitSide(crop.Dx(), crop.Dy(), side)
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	xdraw.BiLinear.Scale(dst, dst.Bounds(), img, crop, xdraw.Src, nil)
	if v > 0 {
		adjust(dst, 0.85+0.3*rng.Float64(), -12+24*rng.Float64())
	}
	return dst
}

// encodeStats summarise the encoded frames.
type encodeStats struct {
	maxW, maxH       int
	minQ, maxQ       int
	minSize, maxSize int
}

// encodeScenes renders and encodes frameVariants frames of every scene,
// GOMAXPROCS scenes at a time, each as a JPEG that fits limit bytes of
// input. The frames of a scene are alike, so each starts at the quality
// that fitted the one before.
func encodeScenes(ctx context.Context, names []string, render []func(v int, rng *rand.Rand) *image.RGBA, limit int) ([]scene, encodeStats, error) {
	type result struct {
		q    int
		size image.Point
		n    int
	}
	scenes := make([]scene, len(names))
	results := make([][]result, len(names))
	errs := make([]error, len(names))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(names)) {
		wg.Go(func() {
			for s := range jobs {
				scenes[s] = scene{name: names[s], frames: make([]string, frameVariants)}
				results[s] = make([]result, frameVariants)
				from := 0
				for v := range frameVariants {
					if ctx.Err() != nil {
						break
					}
					rng := rand.New(rand.NewPCG(framesSeed, uint64(s*frameVariants+v)))
					b, q, size, err := fitJPEG(render[s](v, rng), limit, from)
					if err != nil {
						errs[s] = fmt.Errorf("frame %d of %s: %w", v, names[s], err)
						break
					}
					from = slices.Index(jpegQualities, q)
					scenes[s].frames[v] = imageBase64(b)
					results[s][v] = result{q, size, imageInputSize(len(b))}
				}
			}
		})
	}
feed:
	for s := range names {
		select {
		case jobs <- s:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, encodeStats{}, err
	}
	if err := errors.Join(errs...); err != nil {
		return nil, encodeStats{}, err
	}
	st := encodeStats{minQ: 100, minSize: limit}
	for _, rs := range results {
		for _, r := range rs {
			st.maxW, st.maxH = max(st.maxW, r.size.X), max(st.maxH, r.size.Y)
			st.minQ, st.maxQ = min(st.minQ, r.q), max(st.maxQ, r.q)
			st.minSize, st.maxSize = min(st.minSize, r.n), max(st.maxSize, r.n)
		}
	}
	return scenes, st, nil
}

// camera is one device's camera: it looks at one scene for a while, frame
// after frame, then at another.
type camera struct {
	rng    *rand.Rand
	scenes []scene
	scene  int
	left   int // frames before the camera moves on
	last   int // last frame shown of the scene
}

func newCamera(scenes []scene, rng *rand.Rand) *camera {
	return &camera{rng: rng, scenes: scenes, scene: rng.IntN(len(scenes)), left: sceneMin + rng.IntN(sceneMax-sceneMin+1), last: -1}
}

func (c *camera) next() string {
	if c.left == 0 {
		if len(c.scenes) > 1 {
			c.scene = (c.scene + 1 + c.rng.IntN(len(c.scenes)-1)) % len(c.scenes)
		}
		c.left = sceneMin + c.rng.IntN(sceneMax-sceneMin+1)
		c.last = -1
	}
	c.left--
	v := c.rng.IntN(frameVariants)
	if v == c.last {
		v = (v + 1) % frameVariants
	}
	c.last = v
	return c.scenes[c.scene].frames[v]
}

// A synthetic scene: sky, ground at a horizon, and shapes that move
// between frames. They are not COCO objects a detector would know; they
// stand in for photos so that the frames have the size and the texture of
// camera frames.
type synthObject struct {
	kind       string  // car, person, animal, tree
	x, y, size float64 // centre of the base and height, as fractions of the frame
	dx         float64 // movement per frame, as a fraction of the width
	col        color.RGBA
}

var syntheticScenes = []struct {
	name          string
	sky, ground   color.RGBA
	horizon       float64
	objects       []synthObject
	skyGradient   float64
	groundTexture float64
}{
	{name: "synthetic street", sky: color.RGBA{150, 185, 225, 255}, ground: color.RGBA{95, 95, 100, 255}, horizon: 0.45, skyGradient: 50, groundTexture: 6,
		objects: []synthObject{
			{"tree", 0.1, 0.5, 0.45, 0, color.RGBA{40, 110, 45, 255}},
			{"car", 0.3, 0.85, 0.22, 0.04, color.RGBA{180, 30, 30, 255}},
			{"person", 0.7, 0.8, 0.35, -0.015, color.RGBA{40, 50, 120, 255}},
			{"car", 0.85, 0.65, 0.14, -0.03, color.RGBA{230, 230, 235, 255}},
		}},
	{name: "synthetic field", sky: color.RGBA{120, 170, 230, 255}, ground: color.RGBA{80, 140, 60, 255}, horizon: 0.4, skyGradient: 60, groundTexture: 12,
		objects: []synthObject{
			{"tree", 0.8, 0.45, 0.4, 0, color.RGBA{30, 90, 35, 255}},
			{"animal", 0.35, 0.8, 0.25, 0.02, color.RGBA{120, 80, 40, 255}},
			{"animal", 0.6, 0.65, 0.15, -0.01, color.RGBA{230, 225, 215, 255}},
			{"person", 0.15, 0.9, 0.45, 0.01, color.RGBA{150, 40, 40, 255}},
		}},
	{name: "synthetic yard", sky: color.RGBA{190, 200, 210, 255}, ground: color.RGBA{140, 120, 95, 255}, horizon: 0.5, skyGradient: 30, groundTexture: 10,
		objects: []synthObject{
			{"animal", 0.5, 0.85, 0.2, 0.03, color.RGBA{50, 40, 35, 255}},
			{"person", 0.3, 0.8, 0.4, 0.005, color.RGBA{200, 180, 60, 255}},
			{"car", 0.78, 0.7, 0.2, 0, color.RGBA{40, 60, 90, 255}},
		}},
	{name: "synthetic road", sky: color.RGBA{200, 170, 140, 255}, ground: color.RGBA{70, 70, 72, 255}, horizon: 0.42, skyGradient: 70, groundTexture: 5,
		objects: []synthObject{
			{"car", 0.2, 0.9, 0.3, 0.05, color.RGBA{20, 20, 25, 255}},
			{"car", 0.6, 0.7, 0.18, -0.04, color.RGBA{30, 100, 170, 255}},
			{"tree", 0.92, 0.48, 0.35, 0, color.RGBA{50, 100, 40, 255}},
		}},
}

// syntheticFrame renders frame v of synthetic scene s at w×h.
func syntheticFrame(s, v, w, h int, rng *rand.Rand) *image.RGBA {
	sc := syntheticScenes[s]
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	hy := int(sc.horizon * float64(h))
	for y := range h {
		var c color.RGBA
		if y < hy {
			f := float64(y) / float64(max(hy, 1)) * sc.skyGradient
			c = color.RGBA{clamp8(float64(sc.sky.R) + f*0.4), clamp8(float64(sc.sky.G) + f*0.6), clamp8(float64(sc.sky.B) + f*0.2), 255}
		} else {
			c = sc.ground
		}
		fillRect(img, image.Rect(0, y, w, y+1), c)
	}
	// Texture on the ground: blotches, as grass, gravel or asphalt have.
	for range 400 {
		x, y := rng.IntN(w), hy+rng.IntN(max(h-hy, 1))
		d := (rng.Float64()*2 - 1) * sc.groundTexture * 2
		c := color.RGBA{clamp8(float64(sc.ground.R) + d), clamp8(float64(sc.ground.G) + d), clamp8(float64(sc.ground.B) + d), 255}
		fillEllipse(img, x, y, 2+rng.IntN(w/40+1), 1+rng.IntN(h/80+1), c)
	}
	// Far objects first.
	objs := slices.Clone(sc.objects)
	slices.SortFunc(objs, func(a, b synthObject) int {
		switch {
		case a.y < b.y:
			return -1
		case a.y > b.y:
			return 1
		}
		return 0
	})
	for _, o := range objs {
		x := o.x + o.dx*float64(v)
		drawObject(img, o.kind, int(x*float64(w)), int(o.y*float64(h)), int(o.size*float64(h)), o.col)
	}
	newNoiseTile(rng, 64, 64).add(img, 3, rng)
	adjust(img, 0.9+0.2*rng.Float64(), -8+16*rng.Float64())
	return img
}

// drawObject draws a shape of height size standing at (x, y).
func drawObject(img *image.RGBA, kind string, x, y, size int, c color.RGBA) {
	dark := color.RGBA{c.R / 3, c.G / 3, c.B / 3, 255}
	skin := color.RGBA{225, 185, 150, 255}
	switch kind {
	case "car":
		l := size * 2
		fillRect(img, image.Rect(x-l/2, y-size*3/4, x+l/2, y-size/4), c)
		fillRect(img, image.Rect(x-l/4, y-size, x+l/4, y-size*3/4), c)
		fillRect(img, image.Rect(x-l/4+size/10, y-size*19/20, x+l/4-size/10, y-size*3/4), color.RGBA{150, 190, 220, 255})
		fillEllipse(img, x-l/3, y-size/4, size/4, size/4, color.RGBA{15, 15, 15, 255})
		fillEllipse(img, x+l/3, y-size/4, size/4, size/4, color.RGBA{15, 15, 15, 255})
	case "person":
		head := size / 8
		fillEllipse(img, x, y-size+head, head*3/4, head, skin)
		fillRect(img, image.Rect(x-size/8, y-size+2*head, x+size/8, y-size/2), c)
		fillRect(img, image.Rect(x-size/6, y-size+2*head, x-size/8, y-size*3/5), c) // arms
		fillRect(img, image.Rect(x+size/8, y-size+2*head, x+size/6, y-size*3/5), c)
		fillRect(img, image.Rect(x-size/9, y-size/2, x-size/60, y), dark)
		fillRect(img, image.Rect(x+size/60, y-size/2, x+size/9, y), dark)
	case "animal":
		fillEllipse(img, x, y-size*3/5, size*3/5, size/4, c)
		fillEllipse(img, x+size*2/3, y-size*4/5, size/5, size/7, c)
		for _, lx := range []int{-size / 3, -size / 6, size / 6, size / 3} {
			fillRect(img, image.Rect(x+lx-size/24, y-size/2, x+lx+size/24, y), dark)
		}
	case "tree":
		fillRect(img, image.Rect(x-size/14, y-size/2, x+size/14, y), color.RGBA{90, 60, 30, 255})
		fillEllipse(img, x, y-size*2/3, size/3, size/3, c)
	}
}
