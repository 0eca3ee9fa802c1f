package broker

import (
	"crypto/subtle"
	"fmt"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/topics"
)

// Role is what an authenticated user may do inside the service's prefix.
type Role string

// The roles of the credentials file.
const (
	// RoleDevice publishes its own requests and reads its own results, the
	// catalog and status.
	RoleDevice Role = "device"
	// RoleObserver reads every result, the catalog and status; it publishes nothing in the prefix.
	RoleObserver Role = "observer"
	// RoleWorker reads requests and publishes results, the catalog, status
	// and sent records.
	RoleWorker Role = "worker"
)

// Credential is one user allowed to connect when auth is on.
type Credential struct {
	Username string
	Password string
	Role     Role
}

// authHook authenticates connections and applies the subscription and
// publish roles inside the prefix. Without credentials (open development
// mode) everyone may connect and read; the identity rule for requests is
// enforced by the request hook in both modes.
type authHook struct {
	mqtt.HookBase
	prefix string
	users  map[string]Credential // nil in open mode
}

func newAuthHook(prefix string, creds []Credential) (*authHook, error) {
	h := &authHook{prefix: prefix}
	if creds == nil {
		return h, nil
	}
	h.users = make(map[string]Credential, len(creds))
	for i, c := range creds {
		if err := topics.ValidID(c.Username); err != nil {
			return nil, fmt.Errorf("credential %d: username: %w", i, err)
		}
		switch c.Role {
		case RoleDevice, RoleObserver, RoleWorker:
		default:
			return nil, fmt.Errorf("credential %d (%s): unknown role %q (want device, observer or worker)", i, c.Username, c.Role)
		}
		if _, dup := h.users[c.Username]; dup {
			return nil, fmt.Errorf("credential %d: username %q listed twice", i, c.Username)
		}
		h.users[c.Username] = c
	}
	return h, nil
}

func (h *authHook) ID() string { return "mqttinfer-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if h.users == nil {
		return true
	}
	c, ok := h.users[string(pk.Connect.Username)]
	if !ok {
		return false
	}
	return subtle.ConstantTimeCompare(pk.Connect.Password, []byte(c.Password)) == 1
}

// OnACLCheck decides publishes (write) and subscriptions (read). Requests are
// always writable here: a device publishing under another id is answered 403
// in-band by the request hook instead of being disconnected by an ACL deny.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	filter := topic
	if !write {
		filter = stripShare(topic)
	}
	if !topics.Under(h.prefix, filter) && filter != h.prefix+"/#" && filter != "#" {
		return true // ordinary broker traffic: open to every connected client
	}
	if h.users == nil {
		return true
	}
	c, ok := h.users[string(cl.Properties.Username)]
	if !ok {
		return false
	}
	if filter == "#" {
		return c.Role == RoleWorker
	}
	levels := strings.Split(filter[len(h.prefix)+1:], "/")
	kind := ""
	if len(levels) > 1 {
		kind = levels[1]
	}
	switch c.Role {
	case RoleWorker:
		switch kind {
		case topics.KindResult.String(), topics.KindModels.String(), topics.KindStatus.String(), topics.KindSent.String():
			return true
		}
		return !write
	case RoleObserver:
		return !write && readable(levels, "")
	case RoleDevice:
		if write {
			return kind == topics.KindRequest.String()
		}
		return readable(levels, c.Username)
	}
	return false
}

// readable reports whether a subscription filter (levels after the prefix)
// only reaches results, the catalog and status; with device set, only that
// device's own results.
func readable(levels []string, device string) bool {
	if len(levels) < 2 || levels[0] == "#" || levels[1] == "#" {
		return false
	}
	switch levels[1] {
	case topics.KindResult.String():
		if len(levels) != 4 || levels[3] == "#" {
			return false
		}
		return device == "" && levels[2] != "#" || levels[2] == device
	case topics.KindModels.String():
		return len(levels) == 2
	case topics.KindStatus.String():
		return len(levels) == 3
	}
	return false
}

// stripShare removes a "$share/<group>/" prefix from a subscription filter.
func stripShare(filter string) string {
	if !strings.HasPrefix(filter, "$share/") {
		return filter
	}
	rest := filter[len("$share/"):]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i+1:]
	}
	return filter
}

// senderID is the identity a request must be published under: the
// authenticated username when auth is on, else the MQTT client id.
func (h *authHook) senderID(cl *mqtt.Client) string {
	if h.users != nil {
		return string(cl.Properties.Username)
	}
	return cl.ID
}
