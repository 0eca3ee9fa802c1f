package vad

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

// FuzzAudio sends the same audio both ways a microphone can: as pcm16
// (base64 of int16 little-endian, padded or not) and as samples (numbers
// in [-1, 1]). pcm16 of an odd number of bytes or of more than the limit
// must be refused as invalid input; otherwise both must decode to exactly
// int16/32768 per sample, so the model hears the same audio either way.
func FuzzAudio(f *testing.F) {
	const maxSamples = 64
	f.Add([]byte{0, 0, 1, 0, 0xff, 0x7f, 0, 0x80}, true)
	f.Add([]byte{0, 0, 1, 0, 0xff, 0x7f, 0, 0x80}, false)
	f.Add([]byte{0x34, 0x12, 0xcc}, true)
	f.Add([]byte{}, false)
	f.Add(make([]byte, 2*maxSamples+2), true)
	f.Fuzz(func(t *testing.T, pcm []byte, padded bool) {
		enc := base64.RawStdEncoding
		if padded {
			enc = base64.StdEncoding
		}
		in, err := decodeInput(json.RawMessage(`{"pcm16":"`+enc.EncodeToString(pcm)+`"}`), maxSamples)
		if len(pcm)%2 != 0 || len(pcm)/2 > maxSamples {
			if !inference.IsInvalidInput(err) {
				t.Fatalf("pcm16 of %d bytes: error %v, want InvalidInput", len(pcm), err)
			}
			return
		}
		if err != nil {
			if len(pcm) == 0 && inference.IsInvalidInput(err) {
				return // an empty chunk may be refused
			}
			t.Fatalf("pcm16 of %d bytes: %v", len(pcm), err)
		}
		want := make([]float32, len(pcm)/2)
		nums := make([]string, len(want))
		for i := range want {
			want[i] = float32(int16(binary.LittleEndian.Uint16(pcm[2*i:]))) / 32768
			nums[i] = strconv.FormatFloat(float64(want[i]), 'g', -1, 64)
		}
		if !equalSamples(in.samples, want) {
			t.Fatalf("pcm16 %x decodes to %v, want %v", pcm, in.samples, want)
		}
		raw := `{"samples":[` + strings.Join(nums, ", ") + `],"sample_rate":16000}`
		in, err = decodeInput(json.RawMessage(raw), maxSamples)
		if err != nil {
			if len(want) == 0 && inference.IsInvalidInput(err) {
				return
			}
			t.Fatalf("%s: %v", raw, err)
		}
		if !equalSamples(in.samples, want) {
			t.Fatalf("%s decodes to %v, want %v", raw, in.samples, want)
		}
	})
}

func equalSamples(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
