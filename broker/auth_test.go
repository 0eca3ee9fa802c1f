package broker

import (
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/mqttinfer/mqttinfer/topics"
)

func TestACL(t *testing.T) {
	h, err := newAuthHook("acme/p1", []Credential{
		{Username: "d1", Password: "x", Role: RoleDevice},
		{Username: "ops", Password: "x", Role: RoleObserver},
		{Username: "w1", Password: "x", Role: RoleWorker},
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
		{"d1", "acme/p1/+/res/d1/#", false, false},
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
		{[]Credential{{Username: "a", Password: "x", Role: "admin"}}, "unknown role"},
		{[]Credential{{Username: "a", Password: "x", Role: RoleDevice}, {Username: "a", Password: "y", Role: RoleWorker}}, "twice"},
	} {
		if _, err := newAuthHook("p", c.creds); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: %v, want %q", c.creds, err, c.msg)
		}
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
