// Package topics owns the MQTT topic scheme of mqttinfer: building and parsing
// every topic the service uses, validating device and model ids, and the list
// of supported API versions. No other package writes a topic string by hand.
//
// The scheme, under a configurable prefix (default "mqttinfer"):
//
//	<prefix>/<ver>/req/<device>/<model>   a device's inference request
//	<prefix>/<ver>/res/<device>/<model>   the result, error or stream events
//	<prefix>/<ver>/models                 the model catalog (retained)
//	<prefix>/<ver>/status/<node>          node status (retained, last will)
//	<prefix>/<ver>/sent/<device>/<model>  a copy of a reply that went to an
//	                                      MQTT 5 response topic, for the other
//	                                      remote workers of a group
package topics

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// DefaultPrefix is the topic prefix used when none is configured.
const DefaultPrefix = "mqttinfer"

// MaxIDLen is the longest device, model or node id, in bytes.
const MaxIDLen = 64

// A remote worker tells mqttinfer's broker what it is, so that its
// connection gets a worker's deep outbound queue: in an MQTT 5 CONNECT by
// the user property WorkerRoleProperty set to WorkerRole, and over MQTT
// 3.1.1 by its default client id, "<prefix>-worker-<random>", which holds
// WorkerIDMark.
const (
	WorkerRoleProperty = "mqttinfer-role"
	WorkerRole         = "worker"
	WorkerIDMark       = "-worker-"
)

// Versions lists the supported API versions, oldest first.
var versions = []string{"v1", "v2"}

// Versions returns the supported API versions, oldest first. The slice is a copy.
func Versions() []string { return slices.Clone(versions) }

// Supported reports whether ver is a supported API version.
func Supported(ver string) bool { return slices.Contains(versions, ver) }

// Latest is the newest supported API version.
func Latest() string { return versions[len(versions)-1] }

// Kind says which of the service's topics a parsed topic is.
type Kind int

// The kinds of topic under the prefix.
const (
	KindUnknown Kind = iota
	KindRequest
	KindResult
	KindModels
	KindStatus
	// KindSent is the record a remote worker publishes of a final reply it
	// sent to an MQTT 5 response topic, so that the other workers of its
	// group know the request was answered (they see replies on result
	// topics themselves).
	KindSent
)

// String returns the topic level that names the kind ("req", "res",
// "models", "status"), or "unknown".
func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "req"
	case KindResult:
		return "res"
	case KindModels:
		return "models"
	case KindStatus:
		return "status"
	case KindSent:
		return "sent"
	}
	return "unknown"
}

// Errors returned by Parse and ValidID. Parse wraps them with detail; test with errors.Is.
var (
	// ErrOutside means the topic is not under the prefix: it is ordinary
	// broker traffic, not the service's.
	ErrOutside = errors.New("topic is outside the service prefix")
	// ErrUnsupportedVersion means the version segment is not one of Versions().
	// Parse still fills in the rest of the Topic so the caller can answer on
	// the same (unsupported) version's result topic.
	ErrUnsupportedVersion = errors.New("unsupported API version")
	// ErrBadID means a device, model or node id breaks the id rules.
	ErrBadID = errors.New("invalid id")
	// ErrMalformed means the topic is under the prefix but fits no topic of the scheme.
	ErrMalformed = errors.New("malformed topic")
)

// Topic is a parsed service topic.
type Topic struct {
	Prefix  string
	Version string
	Kind    Kind
	Device  string // request and result topics
	Model   string // request and result topics
	Node    string // status topics
}

// String builds the topic back into its wire form.
func (t Topic) String() string {
	switch t.Kind {
	case KindRequest:
		return Request(t.Prefix, t.Version, t.Device, t.Model)
	case KindResult:
		return Result(t.Prefix, t.Version, t.Device, t.Model)
	case KindModels:
		return Models(t.Prefix, t.Version)
	case KindStatus:
		return Status(t.Prefix, t.Version, t.Node)
	case KindSent:
		return Sent(t.Prefix, t.Version, t.Device, t.Model)
	}
	return ""
}

// SentTopic is the sent-record topic of the request topic t.
func (t Topic) SentTopic() string { return Sent(t.Prefix, t.Version, t.Device, t.Model) }

// ResultTopic is the result topic answering the request topic t (same
// prefix, version, device and model).
func (t Topic) ResultTopic() string { return Result(t.Prefix, t.Version, t.Device, t.Model) }

// ValidID reports whether s is a valid device, model or node id:
// 1–64 bytes of [A-Za-z0-9._-].
func ValidID(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrBadID)
	}
	if len(s) > MaxIDLen {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadID, len(s), MaxIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %q has a character outside [A-Za-z0-9._-] at byte %d", ErrBadID, s, i)
		}
	}
	return nil
}

// ValidPrefix reports whether p can be used as a topic prefix: one or more
// non-empty levels of valid UTF-8 without wildcards, '$' at the start, or NUL
// bytes.
func ValidPrefix(p string) error {
	if p == "" {
		return errors.New("topic prefix is empty")
	}
	// MQTT topic names must be UTF-8 [MQTT-1.5.3-1]; brokers (mochi included)
	// drop a client that sends one that is not, so such a prefix would make
	// every topic of the service unusable.
	if !utf8.ValidString(p) {
		return fmt.Errorf("topic prefix %q is not valid UTF-8", p)
	}
	if strings.HasPrefix(p, "$") {
		return fmt.Errorf("topic prefix %q must not start with '$'", p)
	}
	if strings.ContainsAny(p, "+#\x00") {
		return fmt.Errorf("topic prefix %q must not contain '+', '#' or NUL", p)
	}
	for _, l := range strings.Split(p, "/") {
		if l == "" {
			return fmt.Errorf("topic prefix %q has an empty level", p)
		}
	}
	return nil
}

// Request is the topic a device publishes an inference request on.
func Request(prefix, ver, device, model string) string {
	return prefix + "/" + ver + "/req/" + device + "/" + model
}

// Result is the topic the service answers a request on.
func Result(prefix, ver, device, model string) string {
	return prefix + "/" + ver + "/res/" + device + "/" + model
}

// Models is the retained catalog topic of an API version.
func Models(prefix, ver string) string { return prefix + "/" + ver + "/models" }

// Status is the retained status topic of a service node.
func Status(prefix, ver, node string) string { return prefix + "/" + ver + "/status/" + node }

// Sent is the topic of the records of replies sent to MQTT 5 response
// topics for a device and model (see KindSent).
func Sent(prefix, ver, device, model string) string {
	return prefix + "/" + ver + "/sent/" + device + "/" + model
}

// SentFilter matches every sent record of every version under prefix.
func SentFilter(prefix string) string { return prefix + "/+/sent/+/+" }

// RequestFilter is the subscription filter matching every request of every
// version under prefix.
func RequestFilter(prefix string) string { return prefix + "/+/req/+/+" }

// SharedRequestFilter is the shared-subscription filter a group of remote
// workers uses to split the requests under prefix between them.
func SharedRequestFilter(group, prefix string) string {
	return "$share/" + group + "/" + RequestFilter(prefix)
}

// ResultFilter is a subscription filter for result topics. An empty ver,
// device or model matches any.
func ResultFilter(prefix, ver, device, model string) string {
	return Result(prefix, orAny(ver), orAny(device), orAny(model))
}

// StatusFilter matches every node's status topic of every version.
func StatusFilter(prefix string) string { return prefix + "/+/status/+" }

// NodeStatusFilter matches every node's status topic of one version.
func NodeStatusFilter(prefix, ver string) string { return Status(prefix, ver, "+") }

func orAny(s string) string {
	if s == "" {
		return "+"
	}
	return s
}

// Under reports whether topic lies under prefix (the service's namespace).
func Under(prefix, topic string) bool {
	return len(topic) > len(prefix) && topic[len(prefix)] == '/' && strings.HasPrefix(topic, prefix)
}

// Parse parses a topic under prefix. On every error but ErrOutside the
// returned Topic is filled in as far as the topic could be read (Kind is set
// whenever the second level names one), so the caller can still address an
// error reply.
func Parse(prefix, topic string) (Topic, error) {
	if !Under(prefix, topic) {
		return Topic{}, ErrOutside
	}
	rest := topic[len(prefix)+1:]
	parts := strings.Split(rest, "/")
	t := Topic{Prefix: prefix, Version: parts[0]}
	if len(parts) < 2 {
		return t, fmt.Errorf("%w: %q", ErrMalformed, topic)
	}
	want := 0
	switch parts[1] {
	case "req":
		t.Kind, want = KindRequest, 4
	case "res":
		t.Kind, want = KindResult, 4
	case "models":
		t.Kind, want = KindModels, 2
	case "status":
		t.Kind, want = KindStatus, 3
	case "sent":
		t.Kind, want = KindSent, 4
	default:
		return t, fmt.Errorf("%w: %q", ErrMalformed, topic)
	}
	// Kind is kept on a malformed topic so the caller knows, for instance,
	// that a request was meant and can answer it.
	if len(parts) != want {
		return t, fmt.Errorf("%w: %q has %d levels after the prefix, want %d", ErrMalformed, topic, len(parts), want)
	}
	switch t.Kind {
	case KindRequest, KindResult, KindSent:
		t.Device, t.Model = parts[2], parts[3]
	case KindStatus:
		t.Node = parts[2]
	}
	ids := [][2]string{{"device", t.Device}, {"model", t.Model}}
	if t.Kind == KindStatus {
		ids = [][2]string{{"node", t.Node}}
	} else if t.Kind == KindModels {
		ids = nil
	}
	for _, id := range ids {
		if err := ValidID(id[1]); err != nil {
			return t, fmt.Errorf("%s id: %w", id[0], err)
		}
	}
	if ValidID(t.Version) != nil {
		return t, fmt.Errorf("%w: version level %q", ErrMalformed, t.Version)
	}
	if !Supported(t.Version) {
		return t, fmt.Errorf("%w %q (supported: %s)", ErrUnsupportedVersion, t.Version, strings.Join(versions, ", "))
	}
	return t, nil
}
