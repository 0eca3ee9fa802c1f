package topics

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestBuilders(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"request", Request("mqttinfer", "v1", "d1", "anomaly"), "mqttinfer/v1/req/d1/anomaly"},
		{"result", Result("mqttinfer", "v2", "d1", "anomaly"), "mqttinfer/v2/res/d1/anomaly"},
		{"models", Models("mqttinfer", "v1"), "mqttinfer/v1/models"},
		{"status", Status("mqttinfer", "v1", "node-1"), "mqttinfer/v1/status/node-1"},
		{"request multi-level prefix", Request("acme/plant1", "v1", "d.1", "m_2"), "acme/plant1/v1/req/d.1/m_2"},
		{"status multi-level prefix", Status("acme/plant1", "v2", "n"), "acme/plant1/v2/status/n"},
		{"request filter", RequestFilter("mqttinfer"), "mqttinfer/+/req/+/+"},
		{"shared request filter", SharedRequestFilter("workers", "mqttinfer"), "$share/workers/mqttinfer/+/req/+/+"},
		{"shared request filter multi-level", SharedRequestFilter("g1", "acme/plant1"), "$share/g1/acme/plant1/+/req/+/+"},
		{"status filter", StatusFilter("acme/plant1"), "acme/plant1/+/status/+"},
		{"result filter all", ResultFilter("mqttinfer", "", "", ""), "mqttinfer/+/res/+/+"},
		{"result filter version", ResultFilter("mqttinfer", "v1", "", ""), "mqttinfer/v1/res/+/+"},
		{"result filter device", ResultFilter("mqttinfer", "", "d1", ""), "mqttinfer/+/res/d1/+"},
		{"result filter model", ResultFilter("mqttinfer", "", "", "vad"), "mqttinfer/+/res/+/vad"},
		{"result filter exact", ResultFilter("mqttinfer", "v2", "d1", "vad"), "mqttinfer/v2/res/d1/vad"},
		{"result topic of a request", Topic{Prefix: "p", Version: "v9", Kind: KindRequest, Device: "d", Model: "m"}.ResultTopic(), "p/v9/res/d/m"},
		{"unknown kind has no string", Topic{Prefix: "p", Version: "v1"}.String(), ""},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{
		KindUnknown: "unknown", KindRequest: "req", KindResult: "res",
		KindModels: "models", KindStatus: "status", KindSent: "sent", Kind(42): "unknown",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}

func TestParseRoundTrip(t *testing.T) {
	tests := []struct {
		prefix, topic string
		want          Topic
	}{
		{"mqttinfer", "mqttinfer/v1/req/d1/anomaly",
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "d1", Model: "anomaly"}},
		{"mqttinfer", "mqttinfer/v2/res/sensor-7.a_b/vad",
			Topic{Prefix: "mqttinfer", Version: "v2", Kind: KindResult, Device: "sensor-7.a_b", Model: "vad"}},
		{"mqttinfer", "mqttinfer/v1/models",
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindModels}},
		{"mqttinfer", "mqttinfer/v2/status/node-1",
			Topic{Prefix: "mqttinfer", Version: "v2", Kind: KindStatus, Node: "node-1"}},
		{"mqttinfer", "mqttinfer/v2/sent/d1/chat",
			Topic{Prefix: "mqttinfer", Version: "v2", Kind: KindSent, Device: "d1", Model: "chat"}},
		{"acme/plant1", "acme/plant1/v1/req/d1/m1",
			Topic{Prefix: "acme/plant1", Version: "v1", Kind: KindRequest, Device: "d1", Model: "m1"}},
		{"acme/plant1", "acme/plant1/v1/models",
			Topic{Prefix: "acme/plant1", Version: "v1", Kind: KindModels}},
		// Ids may look like kinds or versions: the position decides.
		{"mqttinfer", "mqttinfer/v1/req/req/v1",
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "req", Model: "v1"}},
		{"mqttinfer", "mqttinfer/v1/req/" + strings.Repeat("a", MaxIDLen) + "/" + strings.Repeat("Z", MaxIDLen),
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: strings.Repeat("a", MaxIDLen), Model: strings.Repeat("Z", MaxIDLen)}},
	}
	for _, tc := range tests {
		got, err := Parse(tc.prefix, tc.topic)
		if err != nil {
			t.Errorf("Parse(%q, %q): %v", tc.prefix, tc.topic, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Parse(%q, %q) = %+v, want %+v", tc.prefix, tc.topic, got, tc.want)
		}
		if s := got.String(); s != tc.topic {
			t.Errorf("Parse(%q, %q).String() = %q", tc.prefix, tc.topic, s)
		}
	}
}

func TestParseErrors(t *testing.T) {
	long := strings.Repeat("x", MaxIDLen+1)
	tests := []struct {
		name, prefix, topic string
		err                 error
		want                Topic // checked unless the error is ErrOutside
	}{
		// Outside the prefix.
		{"other prefix", "mqttinfer", "factory/v1/req/d/m", ErrOutside, Topic{}},
		{"string prefix but not a level", "mqttinfer", "mqttinferx/v1/req/d/m", ErrOutside, Topic{}},
		{"prefix alone", "mqttinfer", "mqttinfer", ErrOutside, Topic{}},
		{"shorter than prefix", "mqttinfer", "mqtt", ErrOutside, Topic{}},
		{"empty topic", "mqttinfer", "", ErrOutside, Topic{}},
		{"first level of a multi-level prefix", "acme/plant1", "acme/v1/req/d/m", ErrOutside, Topic{}},
		{"multi-level prefix string-prefix", "acme/plant1", "acme/plant10/v1/req/d/m", ErrOutside, Topic{}},
		{"system topic", "mqttinfer", "$SYS/broker/uptime", ErrOutside, Topic{}},

		// Unsupported versions: everything else still filled in.
		{"unsupported version request", "mqttinfer", "mqttinfer/v9/req/d1/anomaly", ErrUnsupportedVersion,
			Topic{Prefix: "mqttinfer", Version: "v9", Kind: KindRequest, Device: "d1", Model: "anomaly"}},
		{"unsupported version result", "mqttinfer", "mqttinfer/V1/res/d1/m", ErrUnsupportedVersion,
			Topic{Prefix: "mqttinfer", Version: "V1", Kind: KindResult, Device: "d1", Model: "m"}},
		{"unsupported version models", "mqttinfer", "mqttinfer/v0/models", ErrUnsupportedVersion,
			Topic{Prefix: "mqttinfer", Version: "v0", Kind: KindModels}},
		{"unsupported version status", "acme/plant1", "acme/plant1/beta/status/n1", ErrUnsupportedVersion,
			Topic{Prefix: "acme/plant1", Version: "beta", Kind: KindStatus, Node: "n1"}},

		// Bad ids.
		{"device with space", "mqttinfer", "mqttinfer/v1/req/d 1/m", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "d 1", Model: "m"}},
		{"model with plus", "mqttinfer", "mqttinfer/v1/req/d1/+", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "d1", Model: "+"}},
		{"device with hash", "mqttinfer", "mqttinfer/v1/res/#/m", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindResult, Device: "#", Model: "m"}},
		{"device of 65 bytes", "mqttinfer", "mqttinfer/v1/req/" + long + "/m", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: long, Model: "m"}},
		{"model of 65 bytes", "mqttinfer", "mqttinfer/v1/req/d/" + long, ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "d", Model: long}},
		{"empty device", "mqttinfer", "mqttinfer/v1/req//m", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Model: "m"}},
		{"empty model", "mqttinfer", "mqttinfer/v1/req/d/", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "d"}},
		{"empty node", "mqttinfer", "mqttinfer/v1/status/", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindStatus}},
		{"non-ASCII device", "mqttinfer", "mqttinfer/v1/req/dé/m", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest, Device: "dé", Model: "m"}},
		{"bad id and bad version", "mqttinfer", "mqttinfer/v9/req/d 1/m", ErrBadID,
			Topic{Prefix: "mqttinfer", Version: "v9", Kind: KindRequest, Device: "d 1", Model: "m"}},

		// Wrong shapes: Kind kept whenever the second level names one.
		{"request with 3 levels", "mqttinfer", "mqttinfer/v1/req/d1", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest}},
		{"request with 5 levels", "mqttinfer", "mqttinfer/v1/req/d1/m/x", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest}},
		{"request with trailing slash", "mqttinfer", "mqttinfer/v1/req/d1/m/", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindRequest}},
		{"result with 2 levels", "mqttinfer", "mqttinfer/v1/res", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindResult}},
		{"models with an extra level", "mqttinfer", "mqttinfer/v1/models/x", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindModels}},
		{"status without node", "mqttinfer", "mqttinfer/v1/status", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindStatus}},
		{"status with 2 nodes", "mqttinfer", "mqttinfer/v1/status/a/b", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1", Kind: KindStatus}},
		{"unknown kind", "mqttinfer", "mqttinfer/v1/foo/d/m", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1"}},
		{"kind is case-sensitive", "mqttinfer", "mqttinfer/v1/REQ/d/m", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1"}},
		{"version only", "mqttinfer", "mqttinfer/v1", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "v1"}},
		{"empty after prefix", "mqttinfer", "mqttinfer/", ErrMalformed,
			Topic{Prefix: "mqttinfer"}},
		{"empty version", "mqttinfer", "mqttinfer//req/d/m", ErrMalformed,
			Topic{Prefix: "mqttinfer", Kind: KindRequest, Device: "d", Model: "m"}},
		{"wildcard version", "mqttinfer", "mqttinfer/+/models", ErrMalformed,
			Topic{Prefix: "mqttinfer", Version: "+", Kind: KindModels}},
	}
	sentinels := []error{ErrOutside, ErrUnsupportedVersion, ErrBadID, ErrMalformed}
	for _, tc := range tests {
		got, err := Parse(tc.prefix, tc.topic)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: Parse(%q, %q) error = %v, want %v", tc.name, tc.prefix, tc.topic, err, tc.err)
			continue
		}
		for _, s := range sentinels {
			if s != tc.err && errors.Is(err, s) {
				t.Errorf("%s: error %v also matches %v", tc.name, err, s)
			}
		}
		if got != tc.want {
			t.Errorf("%s: Parse(%q, %q) = %+v, want %+v", tc.name, tc.prefix, tc.topic, got, tc.want)
		}
	}
}

// An unsupported version is answered on that version's result topic, which
// must therefore be a valid topic to publish on.
func TestParseUnsupportedVersionAnswerable(t *testing.T) {
	got, err := Parse(DefaultPrefix, "mqttinfer/v9/req/d1/anomaly")
	if !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("error = %v, want ErrUnsupportedVersion", err)
	}
	if want := "mqttinfer/v9/res/d1/anomaly"; got.ResultTopic() != want {
		t.Errorf("ResultTopic() = %q, want %q", got.ResultTopic(), want)
	}
	for _, v := range Versions() {
		if !strings.Contains(err.Error(), v) {
			t.Errorf("error %q does not list supported version %q", err, v)
		}
	}
}

func TestValidID(t *testing.T) {
	valid := []string{
		"a", "Z", "0", ".", "_", "-", "d1", "sensor-7.a_b", "..", "A-Za-z0-9._-",
		strings.Repeat("a", MaxIDLen),
	}
	for _, s := range valid {
		if err := ValidID(s); err != nil {
			t.Errorf("ValidID(%q) = %v, want nil", s, err)
		}
	}
	invalid := []string{
		"", " ", "a b", "a+", "#", "a/b", "a\x00", "é", "a\tb", "$SYS", "a*", "a:b",
		"a\xff", strings.Repeat("a", MaxIDLen+1),
	}
	for _, s := range invalid {
		if err := ValidID(s); !errors.Is(err, ErrBadID) {
			t.Errorf("ValidID(%q) = %v, want ErrBadID", s, err)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	valid := []string{
		"mqttinfer", DefaultPrefix, "acme/plant1", "a/b/c/d", "x", "with space", "a$b",
		"Ünïcode", "mqttinfer-7f3a9c",
	}
	for _, p := range valid {
		if err := ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q) = %v, want nil", p, err)
		}
	}
	invalid := []string{
		"", "/", "/mqttinfer", "mqttinfer/", "acme//plant1", "$SYS", "$share/g/x",
		"a/+", "+", "a/#", "#", "a\x00b", "a\xffb",
	}
	for _, p := range invalid {
		if err := ValidPrefix(p); err == nil {
			t.Errorf("ValidPrefix(%q) = nil, want an error", p)
		} else if !strings.Contains(err.Error(), "prefix") {
			t.Errorf("ValidPrefix(%q) = %q: the message does not say what is wrong", p, err)
		}
	}
}

func TestVersions(t *testing.T) {
	vs := Versions()
	if want := []string{"v1", "v2"}; !slices.Equal(vs, want) {
		t.Fatalf("Versions() = %q, want %q", vs, want)
	}
	vs[0] = "hacked"
	_ = append(vs[:1], "appended")
	if got := Versions(); !slices.Equal(got, []string{"v1", "v2"}) {
		t.Errorf("changing the returned slice changed Versions() to %q", got)
	}
	if Supported("hacked") || !Supported("v1") || !Supported("v2") || Supported("v3") || Supported("") {
		t.Error("Supported does not follow the supported versions after the copy was changed")
	}
	if Latest() != "v2" {
		t.Errorf("Latest() = %q, want v2", Latest())
	}
}

func TestUnder(t *testing.T) {
	tests := []struct {
		prefix, topic string
		want          bool
	}{
		{"mqttinfer", "mqttinfer/v1/models", true},
		{"mqttinfer", "mqttinfer/", true},
		{"mqttinfer", "mqttinfer", false},
		{"mqttinfer", "mqttinferx/v1", false},
		{"mqttinfer", "mqtt", false},
		{"acme/plant1", "acme/plant1/v1", true},
		{"acme/plant1", "acme/plant2/v1", false},
	}
	for _, tc := range tests {
		if got := Under(tc.prefix, tc.topic); got != tc.want {
			t.Errorf("Under(%q, %q) = %v, want %v", tc.prefix, tc.topic, got, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"mqttinfer/v1/req/d1/anomaly", "mqttinfer/v2/res/d/m", "mqttinfer/v1/models",
		"mqttinfer/v1/status/n1", "mqttinfer/v9/req/d/m", "mqttinferx/v1/req/d/m",
		"mqttinfer/v1/req/d 1/m", "mqttinfer/v1/req/d", "mqttinfer//req/d/m", "mqttinfer/",
		"mqttinfer", "", "mqttinfer/v1/req/+/#", "mqttinfer/v1/status/a/b",
	} {
		f.Add(s)
	}
	const prefix = DefaultPrefix
	f.Fuzz(func(t *testing.T, topic string) {
		got, err := Parse(prefix, topic)
		if !Under(prefix, topic) {
			if err != ErrOutside || got != (Topic{}) {
				t.Fatalf("Parse(%q) = %+v, %v; want ErrOutside and a zero Topic", topic, got, err)
			}
			return
		}
		if errors.Is(err, ErrOutside) {
			t.Fatalf("Parse(%q): ErrOutside for a topic under the prefix", topic)
		}
		if got.Prefix != prefix {
			t.Fatalf("Parse(%q).Prefix = %q", topic, got.Prefix)
		}
		// The kind is known whenever the second level names one.
		levels := strings.Split(topic[len(prefix)+1:], "/")
		if len(levels) >= 2 {
			wantKind := map[string]Kind{"req": KindRequest, "res": KindResult, "models": KindModels, "status": KindStatus}[levels[1]]
			if got.Kind != wantKind {
				t.Fatalf("Parse(%q).Kind = %v, want %v (err %v)", topic, got.Kind, wantKind, err)
			}
		}
		if errors.Is(err, ErrUnsupportedVersion) {
			// Answerable: the version level and ids are safe to build a reply topic from.
			if got.String() != topic || ValidID(got.Version) != nil || Supported(got.Version) {
				t.Fatalf("Parse(%q) = %+v, %v: not a well-formed topic of an unsupported version", topic, got, err)
			}
			return
		}
		if err != nil {
			return
		}
		if s := got.String(); s != topic {
			t.Fatalf("Parse(%q).String() = %q", topic, s)
		}
		if !Supported(got.Version) {
			t.Fatalf("Parse(%q) accepted unsupported version %q", topic, got.Version)
		}
		switch got.Kind {
		case KindRequest, KindResult:
			if ValidID(got.Device) != nil || ValidID(got.Model) != nil || got.Node != "" {
				t.Fatalf("Parse(%q) = %+v: invalid ids accepted", topic, got)
			}
		case KindStatus:
			if ValidID(got.Node) != nil || got.Device != "" || got.Model != "" {
				t.Fatalf("Parse(%q) = %+v: invalid node accepted", topic, got)
			}
		case KindModels:
			if got.Device != "" || got.Model != "" || got.Node != "" {
				t.Fatalf("Parse(%q) = %+v: ids on a models topic", topic, got)
			}
		default:
			t.Fatalf("Parse(%q) = %+v: accepted with kind %v", topic, got, got.Kind)
		}
	})
}
