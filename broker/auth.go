package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Role is what an authenticated user may do inside the service's prefix:
// the roles of the credentials file.
type Role = config.Role

// The roles of the credentials file.
const (
	// RoleDevice publishes its own requests and reads its own results, the
	// catalog and status.
	RoleDevice = config.RoleDevice
	// RoleObserver reads every result, the catalog and status; it publishes nothing in the prefix.
	RoleObserver = config.RoleObserver
	// RoleWorker reads requests and publishes results, the catalog, status
	// and sent records.
	RoleWorker = config.RoleWorker
)

// Credential is one user allowed to connect when auth is on: a user of the
// credentials file (config.LoadCredentials), with a bcrypt PasswordHash or,
// from a file that allows it, a plain-text Password.
type Credential = config.Credential

// authHook authenticates connections and applies the subscription and
// publish roles inside the prefix. Without credentials (open development
// mode) everyone may connect and read; the identity rule for requests is
// enforced by the request hook in both modes.
//
// Reading is decided on the filter at SUBSCRIBE and again on the topic of
// every message delivered (mochi's publishToClient asks OnACLCheck for each
// one, retained messages included): a filter is granted when every topic
// inside the prefix it can match is one the user may read, so '#' works
// inside a user's own subtree, and the check at delivery is a second line.
//
// A client id's session belongs to the user that made it: mochi would hand
// a session (its subscriptions, and its messages in flight, which are
// resent without an ACL check) to any client that resumes it with the same
// client id, so resuming another user's session is refused; a clean start
// discards it and is allowed.
//
// A client that shows a verified client certificate (mutual TLS) is the
// identity the certificate names (certIdentity): with auth on it must be a
// user of the credentials file and needs no password, and a username it
// sends must be that identity.
type authHook struct {
	mqtt.HookBase
	prefix   string
	levels   []string              // the prefix's levels
	auth     *config.Authenticator // nil in open mode
	logins   *config.LoginLog
	certMode string // where a certificate's identity comes from: "cn" ("") or "san"

	mu     sync.Mutex
	owners map[string]string // client id → username, for every session mochi keeps
}

func newAuthHook(prefix string, creds []Credential) (*authHook, error) {
	h := &authHook{prefix: prefix, levels: strings.Split(prefix, "/"), logins: config.NewLoginLog(nil), owners: map[string]string{}}
	if creds == nil {
		return h, nil
	}
	var err error
	if h.auth, err = config.NewAuthenticator(creds); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return h, nil
}

func (h *authHook) ID() string { return "mqttinfer-auth" }

func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	}
	return false
}

// SetOpts takes the logger mochi hands its hooks (the broker's) for the
// lines of refused logins.
func (h *authHook) SetOpts(l *slog.Logger, opts *mqtt.HookOptions) {
	h.HookBase.SetOpts(l, opts)
	h.logins = config.NewLoginLog(l)
}

// Why a login with a client certificate was refused.
var (
	errCertUser     = errors.New("client certificate of an unknown user")
	errCertUsername = errors.New("username is not the client certificate's identity")
)

// OnConnectAuthenticate checks the CONNECT's username and password, or its
// client certificate; a refusal is logged at INFO with its reason
// (rate-limited: see config.LoginLog), because mochi logs none that an
// operator would see. A client with a certificate gets its identity as its
// username, for the ACL and the identity of its requests.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	certID, certified := h.certified(cl)
	var err error
	switch {
	case certified && user != "" && user != certID:
		err = errCertUsername
	case h.auth == nil:
	case certified:
		if _, ok := h.auth.Lookup(certID); !ok {
			err = errCertUser
		}
	default:
		_, err = h.auth.Password(user, pk.Connect.Password)
	}
	if certified {
		user = certID
	}
	if err == nil && h.auth != nil {
		err = h.claim(cl.ID, user, pk.Connect.Clean)
	}
	if err != nil {
		h.logins.Refused("mqtt login refused", "username", user, "client_id", cl.ID, "remote", cl.Net.Remote, "reason", err.Error())
		return false
	}
	if certified {
		cl.Properties.Username = []byte(certID)
	}
	return true
}

// certified returns the identity of cl's verified client certificate; false
// without one, or when it names none.
func (h *authHook) certified(cl *mqtt.Client) (string, bool) {
	id, ok := certIdentity(cl, h.certMode)
	return id, ok && id != ""
}

// errOthersSession refuses a login that would resume another user's session.
var errOthersSession = errors.New("client id holds another user's session (log in with a clean session, or use another client id)")

// claim records that user owns the session of clientID, or refuses when it
// would resume (clean false) another user's session.
func (h *authHook) claim(clientID, user string, clean bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if owner, ok := h.owners[clientID]; ok && owner != user && !clean {
		return errOthersSession
	}
	h.owners[clientID] = user
	return nil
}

// release forgets the session of cl when it ends, unless another login has
// taken its client id since.
func (h *authHook) release(cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.owners[cl.ID] == string(cl.Properties.Username) {
		delete(h.owners, cl.ID)
	}
}

// OnDisconnect forgets a session that ends with its connection.
func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		h.release(cl)
	}
}

// WorkerWritesPending is the outbound queue of a remote worker's
// connection, in messages. Every worker receives every request, and the
// broker drops what a full queue cannot take, so a worker's queue is far
// deeper than a device's (mqtt.max_client_writes_pending): a device's costs
// every device memory, a worker's a few.
const WorkerWritesPending = 8192

// writesPending sizes a client's outbound queue once it has logged in: a
// worker (its role with auth on; in open mode, a client that says so in
// its CONNECT, or, over MQTT 3.1.1, a client id of the remote workers'
// default form, "<prefix>-worker-<random>") gets WorkerWritesPending,
// anyone else the default.
func (h *authHook) writesPending(cl *mqtt.Client) int {
	if h.auth == nil {
		for _, u := range cl.Properties.Props.User {
			if u.Key == topics.WorkerRoleProperty && u.Val == topics.WorkerRole {
				return WorkerWritesPending
			}
		}
		if strings.Contains(cl.ID, topics.WorkerIDMark) {
			return WorkerWritesPending
		}
		return 0
	}
	if c, ok := h.auth.Lookup(string(cl.Properties.Username)); ok && c.Role == RoleWorker {
		return WorkerWritesPending
	}
	return 0
}

// OnClientExpired forgets a persistent session that expired.
func (h *authHook) OnClientExpired(cl *mqtt.Client) { h.release(cl) }

// OnACLCheck decides publishes (write) and subscriptions and deliveries
// (read). Requests are always writable here: a device publishing under
// another id is answered 403 in-band by the request hook instead of being
// disconnected by an ACL deny.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline || h.auth == nil {
		return true
	}
	if write && !topics.Under(h.prefix, topic) {
		return true // ordinary broker traffic: open to every connected client
	}
	c, ok := h.auth.Lookup(string(cl.Properties.Username))
	if !ok {
		return false
	}
	if write {
		return writable(c.Role, h.rest(topic))
	}
	return c.Role == RoleWorker || h.readable(c.Username, c.Role == RoleDevice, stripShare(topic))
}

// writable reports whether role may publish on a topic inside the prefix
// (levels after the prefix).
func writable(role Role, levels []string) bool {
	kind := ""
	if len(levels) > 1 {
		kind = levels[1]
	}
	switch role {
	case RoleWorker:
		switch kind {
		case topics.KindResult.String(), topics.KindModels.String(), topics.KindStatus.String(), topics.KindSent.String():
			return true
		}
	case RoleDevice:
		return kind == topics.KindRequest.String()
	}
	return false
}

// rest returns the levels of topic after the prefix.
func (h *authHook) rest(topic string) []string {
	return strings.Split(topic[len(h.prefix)+1:], "/")
}

// selfLevel in a pattern stands for the user's own name.
const selfLevel = "\x00self"

// What a device or an observer may read inside the prefix, as filters of
// the levels after it: results (a device: only its own), the catalog and
// status, each with whatever lies below.
var (
	deviceReads = [][]string{
		{"+", topics.KindResult.String(), selfLevel, "#"},
		{"+", topics.KindModels.String(), "#"},
		{"+", topics.KindStatus.String(), "#"},
	}
	observerReads = [][]string{
		{"+", topics.KindResult.String(), "#"},
		{"+", topics.KindModels.String(), "#"},
		{"+", topics.KindStatus.String(), "#"},
	}
)

// readable reports whether user (a device, or an observer) may receive
// every topic inside the prefix that filter matches; filter is a topic
// when it has no wildcards. Topics outside the prefix are open to all.
func (h *authHook) readable(user string, device bool, filter string) bool {
	if !strings.ContainsAny(filter, "+#") && !topics.Under(h.prefix, filter) {
		return true
	}
	levels, inside := h.inside(filter)
	if !inside {
		return true
	}
	reads := observerReads
	if device {
		reads = deviceReads
	}
	for _, p := range reads {
		if covers(p, levels, user) {
			return true
		}
	}
	return false
}

// inside returns the part of filter that matches topics inside the prefix,
// as levels after the prefix ("#" when a wildcard reaches into the prefix
// itself), and false when filter can match no topic inside the prefix.
func (h *authHook) inside(filter string) ([]string, bool) {
	levels := strings.Split(filter, "/")
	for i, p := range h.levels {
		switch {
		case i == len(levels):
			return nil, false
		case levels[i] == "#":
			return []string{"#"}, true
		case levels[i] != "+" && levels[i] != p:
			return nil, false
		}
	}
	if len(levels) == len(h.levels) {
		return nil, false // the prefix itself is not under it
	}
	return levels[len(h.levels):], true
}

// covers reports whether every topic filter f matches is matched by the
// filter p, in which selfLevel stands for self.
func covers(p, f []string, self string) bool {
	for i := 0; ; i++ {
		if i < len(p) && p[i] == "#" {
			return true
		}
		if i == len(f) {
			return i == len(p)
		}
		if i == len(p) || f[i] == "#" {
			return false
		}
		want := p[i]
		if want == selfLevel {
			want = self
		}
		if want != "+" && f[i] != want {
			return false
		}
	}
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
// authenticated username (or certificate identity) when auth is on, else
// the identity of the client's certificate, else its MQTT client id.
func (h *authHook) senderID(cl *mqtt.Client) string {
	if h.auth != nil {
		return string(cl.Properties.Username)
	}
	if id, ok := h.certified(cl); ok {
		return id
	}
	return cl.ID
}
