package broker

import (
	"crypto/tls"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/mqttinfer/mqttinfer/internal/testenv"
	"github.com/mqttinfer/mqttinfer/topics"
)

// hashed is the bcrypt hash of password at the lowest cost, for tests.
func hashed(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestACL(t *testing.T) {
	h, err := newAuthHook("acme/p1", []Credential{
		{Username: "d1", Password: "x", Role: RoleDevice},
		{Username: "ops", Password: "x", Role: RoleObserver},
		{Username: "w1", PasswordHash: hashed(t, "x"), Role: RoleWorker},
	})
	if err != nil {
		t.Fatal(err)
	}
	client := func(user string) *mqtt.Client {
		cl := &mqtt.Client{ID: user + "-client"}
		cl.Properties.Username = []byte(user)
		return cl
	}
	cases := []struct {
		user  string
		topic string
		write bool
		want  bool
	}{
		{"d1", "acme/p1/v1/req/d1/anomaly", true, true},
		{"d1", "acme/p1/v1/req/d2/anomaly", true, true}, // answered 403 in-band, not an ACL deny
		{"d1", "acme/p1/v1/res/d1/anomaly", true, false},
		{"d1", "acme/p1/v1/models", true, false},
		{"d1", "acme/p1/v1/res/d1/anomaly", false, true},
		{"d1", "acme/p1/+/res/d1/+", false, true},
		{"d1", "acme/p1/+/res/d2/+", false, false},
		{"d1", "acme/p1/+/res/+/+", false, false},
		{"d1", "acme/p1/#", false, false},
		{"d1", "#", false, false},
		{"d1", "acme/p1/v1/models", false, true},
		{"d1", "acme/p1/+/status/+", false, true},
		{"d1", "acme/p1/+/req/+/+", false, false},
		{"d1", "$share/g/acme/p1/+/req/+/+", false, false},
		{"d1", "plant/line1/temp", true, true}, // outside the prefix
		{"d1", "acme/p10/v1/res/x/y", false, true},
		{"ops", "acme/p1/+/res/+/+", false, true},
		{"w1", "acme/p1/v1/sent/d1/anomaly", true, true},
		{"d1", "acme/p1/v1/sent/d1/anomaly", true, false},
		{"ops", "acme/p1/v1/req/ops/anomaly", true, false},
		{"ops", "acme/p1/+/req/+/+", false, false},
		{"w1", "$share/g/acme/p1/+/req/+/+", false, true},
		{"w1", "acme/p1/v1/res/d1/anomaly", true, true},
		{"w1", "acme/p1/v1/status/w1", true, true},
		{"w1", "acme/p1/v1/req/w1/anomaly", true, false},
		{"stranger", "acme/p1/v1/models", false, false},

		// '#' inside a user's own subtree.
		{"d1", "acme/p1/+/res/d1/#", false, true},
		{"d1", "acme/p1/v1/res/d1/#", false, true},
		{"d1", "acme/p1/v1/res/d2/#", false, false},
		{"d1", "acme/p1/+/res/#", false, false},
		{"d1", "acme/p1/v1/models/#", false, true},
		{"d1", "acme/p1/+/status/#", false, true},
		{"ops", "acme/p1/+/res/#", false, true},
		{"ops", "acme/p1/v1/res/#", false, true},
		{"ops", "$share/g/acme/p1/+/res/#", false, true},
		{"ops", "acme/p1/#", false, false}, // it would match requests
		{"ops", "acme/p1/v1/#", false, false},
		{"ops", "acme/p1/+/+/d1/+", false, false},
		{"ops", "#", false, false},
		{"w1", "#", false, true},
		{"w1", "acme/p1/#", false, true},

		// Wildcards over the prefix's own levels reach inside it too.
		{"d1", "+/p1/+/res/d1/#", false, true},
		{"d1", "acme/+/+/req/+/+", false, false},
		{"ops", "+/+/+/req/+/+", false, false},
		{"ops", "acme/#", false, false},
		{"d1", "+/line1/temp", false, true}, // cannot match inside acme/p1
		{"d1", "acme", false, true},         // nor can the prefix itself

		// Deliveries: mochi asks again with each message's topic.
		{"d1", "acme/p1/v1/res/d2/anomaly", false, false},
		{"d1", "acme/p1/v1/req/d1/anomaly", false, false},
		{"d1", "acme/p1/v2/models", false, true},
		{"d1", "acme/p1/v1/status/n1", false, true},
		{"d1", "acme/p1/v1/sent/d1/anomaly", false, false},
		{"ops", "acme/p1/v1/res/d9/x", false, true},
		{"ops", "acme/p1/v1/req/d1/anomaly", false, false},
		{"ops", "acme/p1/v1/sent/d1/anomaly", false, false},
		{"ops", "factory/line1/temp", false, true},
	}
	for _, c := range cases {
		if got := h.OnACLCheck(client(c.user), c.topic, c.write); got != c.want {
			t.Errorf("%s write=%v %s: %v, want %v", c.user, c.write, c.topic, got, c.want)
		}
	}
}

func TestCredentialsValidated(t *testing.T) {
	for _, c := range []struct {
		creds []Credential
		msg   string
	}{
		{[]Credential{{Username: "a b", Password: "x", Role: RoleDevice}}, "username"},
		{[]Credential{{Username: "a", Password: "x", Role: "admin"}}, `role "admin"`},
		{[]Credential{{Username: "a", Password: "x", Role: RoleDevice}, {Username: "a", Password: "y", Role: RoleWorker}}, "already used"},
		{[]Credential{{Username: "a", PasswordHash: "s3cret", Role: RoleDevice}}, "not a bcrypt hash"},
	} {
		if _, err := newAuthHook("p", c.creds); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: %v, want %q", c.creds, err, c.msg)
		}
	}
}

// authBroker is a broker with hashed credentials on a real socket, and its log.
type authBroker struct {
	*Broker
	log *testenv.LogBuffer
}

func startAuthBroker(t *testing.T) *authBroker {
	t.Helper()
	return serve(t, Options{
		TCPAddr: "127.0.0.1:0",
		Credentials: []Credential{
			{Username: "d1", PasswordHash: hashed(t, "pw-d1"), Role: RoleDevice},
			{Username: "d2", PasswordHash: hashed(t, "pw-d2"), Role: RoleDevice},
			{Username: "ops", PasswordHash: hashed(t, "pw-ops"), Role: RoleObserver},
			{Username: "w1", PasswordHash: hashed(t, "pw-w1"), Role: RoleWorker},
		},
	})
}

// serve starts a broker with opts, logging into a buffer.
func serve(t *testing.T, opts Options) *authBroker {
	t.Helper()
	log := &testenv.LogBuffer{}
	opts.Log = log.Logger()
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &authBroker{Broker: b, log: log}
}

// messages is what a client received, by topic, in order.
type messages struct {
	mu       sync.Mutex
	topics   []string
	payloads []string
	got      chan string
}

func (m *messages) handler(_ paho.Client, msg paho.Message) {
	m.mu.Lock()
	m.topics = append(m.topics, msg.Topic())
	m.payloads = append(m.payloads, string(msg.Payload()))
	m.mu.Unlock()
	m.got <- msg.Topic()
}

// payload is the last payload received on topic.
func (m *messages) payload(topic string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := len(m.topics) - 1; i >= 0; i-- {
		if m.topics[i] == topic {
			return m.payloads[i]
		}
	}
	return ""
}

func (m *messages) all() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.topics)
}

// await waits for a message on topic.
func (m *messages) await(t *testing.T, topic string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-m.got:
			if got == topic {
				return
			}
		case <-timeout:
			t.Fatalf("no message on %s; got %v", topic, m.all())
		}
	}
}

// dial connects to b's TCP listener as user with password and clientID.
func (b *authBroker) dial(t *testing.T, clientID, user, password string, clean bool) (paho.Client, *messages, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID(clientID).SetCleanSession(clean)
	if user != "" {
		o.SetUsername(user).SetPassword(password)
	}
	return connect(t, o)
}

// connect connects a client with options o (MQTT 3.1.1, no retries) that
// records every message it receives.
func connect(t *testing.T, o *paho.ClientOptions) (paho.Client, *messages, error) {
	t.Helper()
	m := &messages{got: make(chan string, 64)}
	c := paho.NewClient(o.SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetDefaultPublishHandler(m.handler))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect: no CONNACK")
	}
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, m, nil
}

func (b *authBroker) login(t *testing.T, clientID, user string) (paho.Client, *messages) {
	t.Helper()
	c, m, err := b.dial(t, clientID, user, "pw-"+user, true)
	if err != nil {
		t.Fatalf("%s logs in: %v", user, err)
	}
	return c, m
}

// subscribe subscribes c to filter and reports whether it was granted.
func subscribe(t *testing.T, c paho.Client, filter string) bool {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter] < 0x80
}

func publish(t *testing.T, c paho.Client, topic, payload string) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// TestACLWildcards over real sockets: '#' inside a device's own results and
// over every result for an observer; the observer sees results, never
// requests; and a device may not resume the observer's session.
func TestACLWildcards(t *testing.T) {
	b := startAuthBroker(t)
	w, _ := b.login(t, "w1", "w1")
	if !subscribe(t, w, topics.RequestFilter(topics.DefaultPrefix)) {
		t.Fatal("worker refused the requests")
	}
	d1, d1msgs := b.login(t, "d1", "d1")
	d2, _ := b.login(t, "d2", "d2")
	ops, opsMsgs, err := b.dial(t, "console", "ops", "pw-ops", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		c      paho.Client
		who    string
		filter string
		want   bool
	}{
		{d1, "d1", "mqttinfer/+/res/d1/#", true},
		{d1, "d1", "mqttinfer/v1/res/d1/#", true},
		{d2, "d2", "mqttinfer/v1/res/d1/#", false},
		{d2, "d2", "mqttinfer/+/res/#", false},
		{ops, "ops", "mqttinfer/#", false},
		{ops, "ops", "#", false},
		{ops, "ops", "mqttinfer/+/res/#", true},
	} {
		if got := subscribe(t, c.c, c.filter); got != c.want {
			t.Errorf("%s subscribing to %s: granted %v, want %v", c.who, c.filter, got, c.want)
		}
	}

	req := topics.Request(topics.DefaultPrefix, "v1", "d1", "anomaly")
	res := topics.Result(topics.DefaultPrefix, "v1", "d1", "anomaly")
	publish(t, d1, req, `{"id":"r1","input":{}}`)
	publish(t, w, res, `{"id":"r1","status":200}`)
	d1msgs.await(t, res)
	opsMsgs.await(t, res)
	for _, topic := range opsMsgs.all() {
		if !strings.Contains(topic, "/res/") {
			t.Errorf("observer got %s", topic)
		}
	}

	// d2 may not resume the observer's session (its subscriptions, its
	// messages in flight); with a clean session it takes the client id and
	// inherits nothing.
	ops.Disconnect(0)
	if _, _, err := b.dial(t, "console", "d2", "pw-d2", false); err == nil {
		t.Fatal("d2 resumed the observer's session")
	}
	if n := len(b.log.Lines("another user's session")); n != 1 {
		t.Errorf("%d log lines for the refused takeover", n)
	}
	clean, cleanMsgs, err := b.dial(t, "console", "d2", "pw-d2", true)
	if err != nil {
		t.Fatal(err)
	}
	own := topics.Result(topics.DefaultPrefix, "v1", "d2", "anomaly")
	if !subscribe(t, clean, "mqttinfer/v1/res/d2/#") {
		t.Fatal("d2 refused its own results")
	}
	publish(t, w, res, `{"id":"r2","status":200}`)
	publish(t, w, own, `{"id":"r3","status":200}`)
	cleanMsgs.await(t, own)
	if got := cleanMsgs.all(); !slices.Equal(got, []string{own}) {
		t.Errorf("d2 with the observer's client id got %v, want only its own result", got)
	}
	// Once d2's clean session ends, the client id is free again.
	clean.Disconnect(250)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := b.dial(t, "console", "ops", "pw-ops", false)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the observer cannot log in with its client id again: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRefusedLoginsLogged: hashed passwords log in; a refused login is an
// INFO line with the username, client id, remote address and reason, and a
// flood of them is cut to a burst.
func TestRefusedLoginsLogged(t *testing.T) {
	b := startAuthBroker(t)
	b.login(t, "d1", "d1")
	for _, c := range []struct{ user, password, reason string }{
		{"d1", "wrong", "wrong password"},
		{"nobody", "x", "unknown user"},
		{"", "", "no credentials"},
	} {
		if _, _, err := b.dial(t, "cl-"+c.user, c.user, c.password, true); err == nil {
			t.Fatalf("%q/%q logged in", c.user, c.password)
		}
		lines := b.log.Lines(`reason="` + c.reason + `"`)
		if len(lines) != 1 {
			t.Fatalf("%d lines with reason %q:\n%s", len(lines), c.reason, strings.Join(b.log.Lines(""), ""))
		}
		for _, want := range []string{"level=INFO", `msg="mqtt login refused"`, "username=" + c.user, "client_id=cl-" + c.user, "remote=127.0.0.1:"} {
			if !strings.Contains(lines[0], want) {
				t.Errorf("line %q lacks %q", lines[0], want)
			}
		}
	}

	start := time.Now()
	for range 40 {
		if _, _, err := b.dial(t, "flood", "", "", true); err == nil {
			t.Fatal("logged in without credentials")
		}
	}
	burst := 10 + int(time.Since(start)/time.Second) + 1
	if n := len(b.log.Lines("mqtt login refused")); n > burst {
		t.Errorf("%d lines for 43 refused logins, want at most %d", n, burst)
	}
}

func TestCheckIdentity(t *testing.T) {
	topic := func(device string) topics.Topic {
		return topics.Topic{Prefix: "p", Version: "v1", Kind: topics.KindRequest, Device: device, Model: "m"}
	}
	if e := checkIdentity("d1", topic("d1")); e != nil {
		t.Errorf("own id refused: %v", e)
	}
	e := checkIdentity("d1", topic("d2"))
	if e == nil || e.Status() != 403 || !strings.Contains(e.Message, "p/v1/req/d1/m") {
		t.Errorf("spoof: %v", e)
	}
	if e := checkIdentity("bad id", topic("bad id")); e == nil || e.Status() != 403 {
		t.Errorf("invalid sender id: %v", e)
	}
}

// TestClientCertificates: a client with a verified client certificate is
// the identity it names, on the ACL and for its requests; with auth on it
// must be a user of the credentials file and needs no password.
func TestClientCertificates(t *testing.T) {
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.ServerFiles(t, t.TempDir(), "127.0.0.1")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	start := func(creds []Credential) (*Broker, *testenv.LogBuffer) {
		b := serve(t, Options{
			TLSAddr:     "127.0.0.1:0",
			TLS:         &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert},
			Credentials: creds,
		})
		return b.Broker, b.log
	}
	dial := func(b *Broker, cn, clientID, user, password string) (paho.Client, *messages, error) {
		o := paho.NewClientOptions().AddBroker("ssl://" + b.TLSAddr()).SetClientID(clientID).SetTLSConfig(ca.ClientTLS(t, cn))
		if user != "" {
			o.SetUsername(user).SetPassword(password)
		}
		return connect(t, o)
	}

	t.Run("auth", func(t *testing.T) {
		b, log := start([]Credential{
			{Username: "cam-7", Role: RoleDevice}, // a certificate only
			{Username: "d1", PasswordHash: hashed(t, "pw-d1"), Role: RoleDevice},
		})
		c, _, err := dial(b, "cam-7", "any-client-id", "", "")
		if err != nil {
			t.Fatalf("cam-7 with its certificate: %v", err)
		}
		if !subscribe(t, c, "mqttinfer/+/res/cam-7/#") || subscribe(t, c, "mqttinfer/+/res/d1/#") {
			t.Error("cam-7 is not its certificate's identity on the ACL")
		}
		for _, tt := range []struct{ cn, user, password, reason string }{
			{"cam-7", "d1", "pw-d1", "username is not the client certificate's identity"},
			{"stranger", "", "", "client certificate of an unknown user"},
		} {
			if _, _, err := dial(b, tt.cn, "x-"+tt.cn, tt.user, tt.password); err == nil {
				t.Errorf("certificate %s as %q logged in", tt.cn, tt.user)
			}
			if n := len(log.Lines(`reason="` + tt.reason + `"`)); n != 1 {
				t.Errorf("%d log lines with reason %q", n, tt.reason)
			}
		}
		if _, _, err := dial(b, "d1", "d1-client", "", ""); err != nil {
			t.Errorf("d1 with a certificate and no password: %v", err)
		}
	})

	t.Run("open", func(t *testing.T) {
		b, _ := start(nil)
		c, m, err := dial(b, "cam-7", "client-x", "", "")
		if err != nil {
			t.Fatal(err)
		}
		// The request is cam-7's although its client id is not: it is
		// admitted (and answered 503: no worker here), not refused 403.
		res := topics.Result(topics.DefaultPrefix, "v1", "cam-7", "anomaly")
		subscribe(t, c, res)
		publish(t, c, topics.Request(topics.DefaultPrefix, "v1", "cam-7", "anomaly"), `{"id":"r1","input":{}}`)
		m.await(t, res)
		if got := m.payload(res); !strings.Contains(got, `"status":503`) {
			t.Errorf("cam-7's request answered %s", got)
		}
	})
}
