package devicesim

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"
)

// wavFile builds a WAV file: a RIFF header, a fmt chunk (format, channels,
// rate, bits), the extra chunks, then a data chunk of size dataSize (0 =
// the length of data) holding data.
func wavFile(format, channels, rate, bits int, extra [][]byte, data []byte, dataSize uint32) []byte {
	fmtChunk := make([]byte, 16)
	binary.LittleEndian.PutUint16(fmtChunk[0:], uint16(format))
	binary.LittleEndian.PutUint16(fmtChunk[2:], uint16(channels))
	binary.LittleEndian.PutUint32(fmtChunk[4:], uint32(rate))
	binary.LittleEndian.PutUint32(fmtChunk[8:], uint32(rate*channels*bits/8))
	binary.LittleEndian.PutUint16(fmtChunk[12:], uint16(channels*bits/8))
	binary.LittleEndian.PutUint16(fmtChunk[14:], uint16(bits))
	b := []byte("RIFF\x00\x00\x00\x00WAVE")
	b = appendChunk(b, "fmt ", fmtChunk)
	for _, e := range extra {
		b = append(b, e...)
	}
	if dataSize == 0 {
		dataSize = uint32(len(data))
	}
	b = append(b, "data"...)
	b = binary.LittleEndian.AppendUint32(b, dataSize)
	b = append(b, data...)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(b)-8))
	return b
}

func appendChunk(b []byte, id string, body []byte) []byte {
	b = append(b, id...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	if len(body)%2 == 1 {
		b = append(b, 0)
	}
	return b
}

func pcmBytes(samples ...int16) []byte {
	var b []byte
	for _, s := range samples {
		b = binary.LittleEndian.AppendUint16(b, uint16(s))
	}
	return b
}

func TestParseWAV(t *testing.T) {
	mono := pcmBytes(0, 16384, -32768, 32767)
	extensible := func() []byte {
		w := wavFile(wavFormatPCM, 1, 22050, 16, nil, mono, 0)
		// Rewrite the fmt chunk as WAVE_FORMAT_EXTENSIBLE with the PCM sub-format.
		body := make([]byte, 40)
		copy(body, w[20:36])
		binary.LittleEndian.PutUint16(body[0:], wavFormatExtensible)
		binary.LittleEndian.PutUint16(body[16:], 22)
		binary.LittleEndian.PutUint16(body[24:], wavFormatPCM)
		b := appendChunk([]byte("RIFF\x00\x00\x00\x00WAVE"), "fmt ", body)
		return appendChunk(b, "data", mono)
	}
	for _, tt := range []struct {
		name    string
		b       []byte
		want    []float32
		rate    int
		wantErr string
	}{
		{name: "mono", b: wavFile(wavFormatPCM, 1, 22050, 16, nil, mono, 0), want: []float32{0, 0.5, -1, 32767.0 / 32768}, rate: 22050},
		{name: "stereo mixed down", b: wavFile(wavFormatPCM, 2, 16000, 16, nil, pcmBytes(1000, 3000, -200, 200), 0), want: []float32{2000.0 / 32768, 0}, rate: 16000},
		{name: "odd LIST chunk before data", b: wavFile(wavFormatPCM, 1, 8000, 16, [][]byte{appendChunk(nil, "LIST", []byte("abc"))}, mono, 0), want: []float32{0, 0.5, -1, 32767.0 / 32768}, rate: 8000},
		{name: "data size past the end (espeak-ng --stdout)", b: wavFile(wavFormatPCM, 1, 22050, 16, nil, mono, 0x7ffff000), want: []float32{0, 0.5, -1, 32767.0 / 32768}, rate: 22050},
		{name: "half a sample at the end", b: wavFile(wavFormatPCM, 1, 22050, 16, nil, append(pcmBytes(100), 7), 0), want: []float32{100.0 / 32768}, rate: 22050},
		{name: "extensible PCM", b: extensible(), want: []float32{0, 0.5, -1, 32767.0 / 32768}, rate: 22050},
		{name: "not RIFF", b: []byte("OggS\x00\x00\x00\x00WAVEfmt "), wantErr: "not a WAV"},
		{name: "empty", b: nil, wantErr: "not a WAV"},
		{name: "float samples", b: wavFile(3, 1, 16000, 32, nil, mono, 0), wantErr: "not integer PCM"},
		{name: "8-bit", b: wavFile(wavFormatPCM, 1, 16000, 8, nil, mono, 0), wantErr: "8-bit"},
		{name: "no channels", b: wavFile(wavFormatPCM, 0, 16000, 16, nil, mono, 0), wantErr: "0 channels"},
		{name: "rate 0", b: wavFile(wavFormatPCM, 1, 0, 16, nil, mono, 0), wantErr: "sample rate 0"},
		{name: "data before fmt", b: appendChunk([]byte("RIFF\x00\x00\x00\x00WAVE"), "data", mono), wantErr: "before its fmt"},
		{name: "short fmt", b: appendChunk([]byte("RIFF\x00\x00\x00\x00WAVE"), "fmt ", []byte{1, 0}), wantErr: "fmt chunk is 2 bytes"},
		{name: "no data", b: wavFile(wavFormatPCM, 1, 16000, 16, nil, nil, 0)[:36], wantErr: "no data chunk"},
		{name: "no fmt", b: []byte("RIFF\x04\x00\x00\x00WAVE"), wantErr: "no fmt chunk"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, rate, err := parseWAV(tt.b)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rate != tt.rate || len(got) != len(tt.want) {
				t.Fatalf("got %d samples at %d Hz, want %d at %d Hz", len(got), rate, len(tt.want), tt.rate)
			}
			for i := range got {
				if math.Abs(float64(got[i]-tt.want[i])) > 1e-6 {
					t.Errorf("sample %d = %v, want %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParseWAV(f *testing.F) {
	f.Add(wavFile(wavFormatPCM, 1, 22050, 16, nil, pcmBytes(1, 2, 3), 0))
	f.Add(wavFile(wavFormatPCM, 2, 16000, 16, [][]byte{appendChunk(nil, "LIST", []byte("x"))}, pcmBytes(1, 2, 3, 4), 0x7ffff000))
	f.Add([]byte("RIFF\xff\xff\xff\xffWAVEfmt \xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		samples, rate, err := parseWAV(b)
		if err != nil {
			return
		}
		if rate < 1000 || rate > 768000 {
			t.Fatalf("accepted rate %d", rate)
		}
		if 2*len(samples) > len(b) {
			t.Fatalf("%d samples from %d bytes", len(samples), len(b))
		}
		for _, s := range samples {
			if !(s >= -1 && s < 1) {
				t.Fatalf("sample %v outside [-1, 1)", s)
			}
		}
	})
}

func sine(freq, rate float64, n int, amp float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(amp * math.Sin(2*math.Pi*freq*float64(i)/rate))
	}
	return x
}

// frequency estimates the frequency of a sine from its upward zero crossings.
func frequency(x []float32, rate float64) float64 {
	first, last, n := -1, -1, 0
	for i := 1; i < len(x); i++ {
		if x[i-1] < 0 && x[i] >= 0 {
			if first < 0 {
				first = i
			} else {
				n++
			}
			last = i
		}
	}
	if n == 0 {
		return 0
	}
	return float64(n) * rate / float64(last-first)
}

func TestResample(t *testing.T) {
	const n = 22050 // one second
	in := sine(1000, 22050, n, 0.5)
	out := resample(in, 22050, 16000)
	if len(out) != 16000 {
		t.Fatalf("%d samples at 22050 Hz became %d at 16000 Hz, want 16000", n, len(out))
	}
	if f := frequency(out, 16000); math.Abs(f-1000) > 2 {
		t.Errorf("a 1 kHz tone came out at %.1f Hz", f)
	}
	// Away from the edges, where the filter has all its taps, the level holds.
	if r := rms(out[1000:15000]) / rms(in[1000:20000]); math.Abs(r-1) > 0.01 {
		t.Errorf("1 kHz level changed by a factor of %.4f", r)
	}
	// A 9 kHz tone is above the new Nyquist frequency (8 kHz): the low-pass
	// removes it rather than folding it to 7 kHz.
	high := resample(sine(9000, 22050, n, 0.5), 22050, 16000)
	if db := 20 * math.Log10(rms(high[1000:15000])/rms(in[1000:20000])); db > -50 {
		t.Errorf("9 kHz tone at %.1f dB after resampling to 16 kHz, want under -50 dB (aliasing)", db)
	}
	// Up-sampling keeps the frequency too, and the same rate is a copy.
	up := resample(sine(1000, 8000, 8000, 0.5), 8000, 16000)
	if len(up) != 16000 || math.Abs(frequency(up, 16000)-1000) > 2 {
		t.Errorf("8 kHz → 16 kHz: %d samples, %.1f Hz", len(up), frequency(up, 16000))
	}
	same := resample(in[:100], 16000, 16000)
	if len(same) != 100 || same[7] != in[7] {
		t.Error("same rate is not a copy")
	}
	// A rate pair with many phases computes its taps on the fly.
	odd := resample(sine(440, 44101, 44101, 0.5), 44101, 16000)
	if len(odd) != 16000 || math.Abs(frequency(odd, 16000)-440) > 2 {
		t.Errorf("44101 Hz → 16 kHz: %d samples, %.1f Hz", len(odd), frequency(odd, 16000))
	}
}
