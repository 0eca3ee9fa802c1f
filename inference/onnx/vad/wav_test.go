package vad

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// readWAV reads a RIFF WAVE file of 16-bit PCM mono audio and returns its
// samples and sample rate.
func readWAV(r io.Reader) ([]int16, int, error) {
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, fmt.Errorf("wav header: %w", err)
	}
	if string(hdr[0:4]) != "RIFF" || string(hdr[8:12]) != "WAVE" {
		return nil, 0, errors.New("not a RIFF WAVE file")
	}
	rate, haveFmt := 0, false
	for {
		var ch [8]byte
		if _, err := io.ReadFull(r, ch[:]); err != nil {
			return nil, 0, fmt.Errorf("wav chunk header: %w", err)
		}
		id, size := string(ch[0:4]), binary.LittleEndian.Uint32(ch[4:8])
		switch id {
		case "fmt ":
			if size < 16 || size > 1<<16 {
				return nil, 0, fmt.Errorf("wav fmt chunk of %d bytes", size)
			}
			b := make([]byte, size+size%2)
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, 0, fmt.Errorf("wav fmt chunk: %w", err)
			}
			format, channels := binary.LittleEndian.Uint16(b[0:2]), binary.LittleEndian.Uint16(b[2:4])
			bits := binary.LittleEndian.Uint16(b[14:16])
			if format == 0xFFFE && size >= 26 { // WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
				format = binary.LittleEndian.Uint16(b[24:26])
			}
			if format != 1 || channels != 1 || bits != 16 {
				return nil, 0, fmt.Errorf("wav format %d, %d channels, %d bits: want PCM (1), mono, 16 bits", format, channels, bits)
			}
			rate, haveFmt = int(binary.LittleEndian.Uint32(b[4:8])), true
		case "data":
			if !haveFmt {
				return nil, 0, errors.New("wav data chunk before fmt chunk")
			}
			if size == 0xFFFFFFFF || size%2 != 0 { // streamed (unknown) length, or odd
				return nil, 0, fmt.Errorf("wav data chunk of %d bytes", size)
			}
			b := make([]byte, size)
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, 0, fmt.Errorf("wav data: %w", err)
			}
			s := make([]int16, size/2)
			for i := range s {
				s[i] = int16(binary.LittleEndian.Uint16(b[2*i:]))
			}
			return s, rate, nil
		default:
			if _, err := io.CopyN(io.Discard, r, int64(size+size%2)); err != nil {
				return nil, 0, fmt.Errorf("wav chunk %q: %w", id, err)
			}
		}
	}
}

// tool returns the path of a Debian tool the real-audio tests need,
// skipping (or failing, when test data is required) when it is missing.
func tool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if required() {
			tb.Fatalf("%s is missing (run `make testdeps`): %v", name, err)
		}
		tb.Skipf("%s is missing (run `make testdeps`): %v", name, err)
	}
	return p
}

// speak synthesises text with espeak-ng and resamples it with sox to 16
// kHz mono 16-bit, returning the samples.
func speak(tb testing.TB, text string) []int16 {
	tb.Helper()
	espeak, sox := tool(tb, "espeak-ng"), tool(tb, "sox")
	dir := tb.TempDir()
	raw, wav := filepath.Join(dir, "espeak.wav"), filepath.Join(dir, "speech.wav")
	if out, err := exec.Command(espeak, "-w", raw, text).CombinedOutput(); err != nil {
		tb.Fatalf("espeak-ng: %v: %s", err, out)
	}
	if out, err := exec.Command(sox, raw, "-r", "16000", "-c", "1", "-b", "16", wav).CombinedOutput(); err != nil {
		tb.Fatalf("sox: %v: %s", err, out)
	}
	f, err := os.Open(wav)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	s, rate, err := readWAV(f)
	if err != nil {
		tb.Fatalf("%s: %v", wav, err)
	}
	if rate != SampleRate || len(s) < SampleRate/2 {
		tb.Fatalf("%s: %d samples at %d Hz, want at least 0.5 s at 16 kHz", wav, len(s), rate)
	}
	return s
}

// tone is n samples of a sine at hz with peak amplitude amp (of full scale).
func tone(n int, hz, amp float64) []int16 {
	s := make([]int16, n)
	for i := range s {
		s[i] = int16(math.Round(amp * 32767 * math.Sin(2*math.Pi*hz*float64(i)/SampleRate)))
	}
	return s
}

// whiteNoise is n samples of uniform white noise with peak amplitude amp.
func whiteNoise(n int, amp float64, seed uint64) []int16 {
	r := rand.New(rand.NewPCG(seed, 1))
	s := make([]int16, n)
	for i := range s {
		s[i] = int16(math.Round(amp * 32767 * (2*r.Float64() - 1)))
	}
	return s
}

func TestReadWAV(t *testing.T) {
	// A minimal file with an extra chunk before data.
	var b []byte
	le := binary.LittleEndian
	b = append(b, "RIFF"...)
	b = le.AppendUint32(b, 0)
	b = append(b, "WAVE"...)
	b = append(b, "fmt "...)
	b = le.AppendUint32(b, 16)
	b = le.AppendUint16(b, 1)
	b = le.AppendUint16(b, 1)
	b = le.AppendUint32(b, 16000)
	b = le.AppendUint32(b, 32000)
	b = le.AppendUint16(b, 2)
	b = le.AppendUint16(b, 16)
	b = append(b, "LIST"...)
	b = le.AppendUint32(b, 3)
	b = append(b, "abc\x00"...) // odd size, padded
	b = append(b, "data"...)
	b = le.AppendUint32(b, 4)
	b = le.AppendUint16(b, 0x8000)
	b = le.AppendUint16(b, 7)
	s, rate, err := readWAV(bytesReader(b))
	if err != nil || rate != 16000 || len(s) != 2 || s[0] != -32768 || s[1] != 7 {
		t.Fatalf("readWAV = %v, %d, %v", s, rate, err)
	}
	if _, _, err := readWAV(bytesReader(b[:len(b)-1])); err == nil {
		t.Error("truncated data accepted")
	}
	stereo := append([]byte(nil), b...)
	le.PutUint16(stereo[22:], 2)
	if _, _, err := readWAV(bytesReader(stereo)); err == nil {
		t.Error("stereo accepted")
	}
}

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

func readWAVFile(tb testing.TB, path string) []int16 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	s, rate, err := readWAV(f)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	if rate != SampleRate {
		tb.Fatalf("%s: %d Hz", path, rate)
	}
	return s
}
