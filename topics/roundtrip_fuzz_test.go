package topics

import (
	"errors"
	"testing"
)

// FuzzRoundTrip builds every kind of topic from fuzzed levels and parses it
// back: with a valid prefix and valid ids, Parse gives back exactly the
// Topic that was built (ErrUnsupportedVersion, still filled in, for a
// version that is well-formed but not served), and String, ResultTopic and
// SentTopic rebuild the same strings as the builders.
func FuzzRoundTrip(f *testing.F) {
	for _, s := range []struct {
		prefix, ver, a, b string
		kind              uint8
	}{
		{DefaultPrefix, "v1", "thermo-1", "anomaly", 0},
		{DefaultPrefix, "v2", "cam.7", "detect", 1},
		{DefaultPrefix, "v1", "", "", 2},
		{DefaultPrefix, "v2", "node-a1b2", "", 3},
		{DefaultPrefix, "v2", "rr-dev", "chat", 4},
		{"acme/plant1", "v9", "meter_01", "ocr", 0},
		{"acme/plant1", "v1", "d/1", "m", 1},
		{"mqttinfer-3f2a9c", "v1", "mic-0001", "vad", 4},
		{"$SYS", "v1", "d", "m", 0},
		{"a//b", "v1", "d", "m", 0},
		{DefaultPrefix, "v1/req/d", "x", "", 2},
		{DefaultPrefix, "v1", "+", "#", 0},
		{DefaultPrefix, "", "d", "m", 1},
		{DefaultPrefix, "v1", "d\x00", "m", 0},
	} {
		f.Add(s.prefix, s.ver, s.a, s.b, s.kind)
	}
	f.Fuzz(func(t *testing.T, prefix, ver, a, b string, kind uint8) {
		if ValidPrefix(prefix) != nil {
			return
		}
		var s string
		want := Topic{Prefix: prefix, Version: ver}
		ids := []string{ver}
		switch kind % 5 {
		case 0:
			s, want.Kind, want.Device, want.Model = Request(prefix, ver, a, b), KindRequest, a, b
			ids = append(ids, a, b)
		case 1:
			s, want.Kind, want.Device, want.Model = Result(prefix, ver, a, b), KindResult, a, b
			ids = append(ids, a, b)
		case 2:
			s, want.Kind = Models(prefix, ver), KindModels
		case 3:
			s, want.Kind, want.Node = Status(prefix, ver, a), KindStatus, a
			ids = append(ids, a)
		case 4:
			s, want.Kind, want.Device, want.Model = Sent(prefix, ver, a, b), KindSent, a, b
			ids = append(ids, a, b)
		}
		for _, id := range ids {
			if ValidID(id) != nil {
				// Invalid levels may make another well-formed topic (a
				// version holding slashes); FuzzParse covers what Parse
				// does with any string.
				return
			}
		}
		if !Under(prefix, s) {
			t.Fatalf("built %q is not under prefix %q", s, prefix)
		}
		got, err := Parse(prefix, s)
		if Supported(ver) {
			if err != nil {
				t.Fatalf("Parse(%q, %q): %v", prefix, s, err)
			}
		} else if !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("Parse(%q, %q) = %v, want ErrUnsupportedVersion", prefix, s, err)
		}
		if got != want {
			t.Fatalf("Parse(%q, %q) = %+v, want %+v", prefix, s, got, want)
		}
		if got.String() != s {
			t.Fatalf("Parse(%q, %q).String() = %q", prefix, s, got.String())
		}
		if got.Kind == KindRequest {
			if rt := got.ResultTopic(); rt != Result(prefix, ver, a, b) {
				t.Fatalf("ResultTopic of %q = %q", s, rt)
			}
			if st := got.SentTopic(); st != Sent(prefix, ver, a, b) {
				t.Fatalf("SentTopic of %q = %q", s, st)
			}
		}
	})
}
