package devicesim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// WAV format tags of the fmt chunk.
const (
	wavFormatPCM        = 1
	wavFormatExtensible = 0xFFFE
)

// parseWAV parses a RIFF/WAVE file of 16-bit integer PCM and returns its
// samples, mixed down to mono and scaled to [-1, 1), and its sample rate.
//
// A data chunk whose size runs past the end of the file is read to the end:
// that is what a writer that cannot seek back writes (espeak-ng --stdout
// gives 0x7ffff000), and a truncated file keeps what it has. Chunks other
// than fmt and data (LIST, fact, ...) are skipped, with RIFF's padding to an
// even size.
func parseWAV(b []byte) ([]float32, int, error) {
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return nil, 0, errors.New("not a WAV file (no RIFF/WAVE header)")
	}
	var (
		haveFmt  bool
		channels int
		rate     int
		bits     int
	)
	for off := 12; off+8 <= len(b); {
		id := string(b[off : off+4])
		size := int64(binary.LittleEndian.Uint32(b[off+4 : off+8]))
		body := b[off+8:]
		if size < int64(len(body)) {
			body = body[:size]
		}
		switch id {
		case "fmt ":
			if len(body) < 16 {
				return nil, 0, fmt.Errorf("WAV fmt chunk is %d bytes, want at least 16", len(body))
			}
			format := binary.LittleEndian.Uint16(body[0:2])
			channels = int(binary.LittleEndian.Uint16(body[2:4]))
			rate = int(binary.LittleEndian.Uint32(body[4:8]))
			bits = int(binary.LittleEndian.Uint16(body[14:16]))
			if format == wavFormatExtensible && len(body) >= 26 {
				format = binary.LittleEndian.Uint16(body[24:26]) // the sub-format GUID starts with the format tag
			}
			switch {
			case format != wavFormatPCM:
				return nil, 0, fmt.Errorf("WAV format tag %#x is not integer PCM (1)", format)
			case bits != 16:
				return nil, 0, fmt.Errorf("WAV has %d-bit samples, want 16", bits)
			case channels < 1:
				return nil, 0, errors.New("WAV has 0 channels")
			case rate < 1000 || rate > 768000:
				return nil, 0, fmt.Errorf("WAV sample rate %d Hz is out of range", rate)
			}
			haveFmt = true
		case "data":
			if !haveFmt {
				return nil, 0, errors.New("WAV data chunk comes before its fmt chunk")
			}
			frame := 2 * channels
			n := len(body) / frame
			out := make([]float32, n)
			for i := range out {
				var sum int
				for c := range channels {
					j := i*frame + 2*c
					sum += int(int16(binary.LittleEndian.Uint16(body[j : j+2])))
				}
				out[i] = float32(sum) / float32(channels) / 32768
			}
			return out, rate, nil
		}
		off += 8 + int(min(size+size&1, int64(len(b)))) // chunks are padded to an even size
	}
	if !haveFmt {
		return nil, 0, errors.New("WAV has no fmt chunk")
	}
	return nil, 0, errors.New("WAV has no data chunk")
}

// resampleZeroCrossings is the half-width of the resampling filter in zero
// crossings of its sinc; 16 gives a transition band of a few hundred Hz and,
// with the Blackman window, over 70 dB of stop-band attenuation.
const resampleZeroCrossings = 16

// resample converts x from rate from to rate to (both in Hz) with a
// Blackman-windowed sinc low-pass whose cut-off is 95% of the lower Nyquist
// frequency, so that downsampling does not alias. The output has
// floor(len(x)·to/from) samples; sample n is at input time n·from/to.
func resample(x []float32, from, to int) []float32 {
	if from == to {
		return append([]float32(nil), x...)
	}
	g := gcd(from, to)
	up, down := to/g, from/g // output sample n is at input position n·down/up
	fc := 0.95 * min(1, float64(to)/float64(from))
	half := int(math.Ceil(resampleZeroCrossings / fc)) // taps on each side, in input samples
	taps := 2 * half
	kernel := func(tau float64) float64 {
		if math.Abs(tau) >= float64(half) {
			return 0
		}
		w := 0.42 + 0.5*math.Cos(math.Pi*tau/float64(half)) + 0.08*math.Cos(2*math.Pi*tau/float64(half))
		return fc * sinc(fc*tau) * w
	}
	// One row of taps per output phase (n·down mod up), each normalised to
	// unity gain at DC; computed on the fly when there are too many phases.
	var table [][]float64
	row := func(phase int) []float64 {
		frac := float64(phase) / float64(up)
		r := make([]float64, taps)
		var sum float64
		for k := range r {
			r[k] = kernel(float64(k-half+1) - frac)
			sum += r[k]
		}
		for k := range r {
			r[k] /= sum
		}
		return r
	}
	if up <= 4096 {
		table = make([][]float64, up)
		for p := range table {
			table[p] = row(p)
		}
	}
	n := int(int64(len(x)) * int64(to) / int64(from))
	out := make([]float32, n)
	for i := range out {
		pos := int64(i) * int64(down)
		base, phase := int(pos/int64(up)), int(pos%int64(up))
		var r []float64
		if table != nil {
			r = table[phase]
		} else {
			r = row(phase)
		}
		var acc float64
		for k, h := range r {
			j := base + k - half + 1
			if j >= 0 && j < len(x) {
				acc += h * float64(x[j])
			}
		}
		out[i] = float32(acc)
	}
	return out
}

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	return math.Sin(math.Pi*x) / (math.Pi * x)
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// normalizePeak scales x in place so that its largest magnitude is peak.
func normalizePeak(x []float32, peak float64) {
	var m float64
	for _, v := range x {
		m = max(m, math.Abs(float64(v)))
	}
	if m == 0 {
		return
	}
	s := float32(peak / m)
	for i := range x {
		x[i] *= s
	}
}

// rms is the root mean square of x (0 when x is empty).
func rms(x []float32) float64 {
	if len(x) == 0 {
		return 0
	}
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return math.Sqrt(s / float64(len(x)))
}
