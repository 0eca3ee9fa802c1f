package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadCredentials(t *testing.T) {
	good := `users:
  - {username: d1, password: secret, role: device}
  - username: ops
    password: s3cret
    role: observer
  - {username: w-1.a, password: x, role: worker}
`
	got, err := LoadCredentials(writeFile(t, "creds.yaml", good))
	if err != nil {
		t.Fatalf("LoadCredentials: %v", err)
	}
	want := []Credential{
		{Username: "d1", Password: "secret", Role: RoleDevice},
		{Username: "ops", Password: "s3cret", Role: RoleObserver},
		{Username: "w-1.a", Password: "x", Role: RoleWorker},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadCredentials = %+v, want %+v", got, want)
	}
	if s := fmt.Sprint(got[0]); strings.Contains(s, "secret") {
		t.Errorf("a Credential prints its password: %s", s)
	}

	bad := []struct {
		name, file string
		wants      []string
	}{
		{"empty file", "", []string{"no users"}},
		{"empty list", "users: []\n", []string{"no users"}},
		{"not YAML", "users: [\n", []string{"creds.yaml"}},
		{"unknown field", "users:\n  - {username: d1, password: x, role: device, admin: true}\n", []string{"field admin not found"}},
		{"unknown top-level key", "user:\n  - {username: d1, password: x, role: device}\n", []string{"field user not found"}},
		{"bad username", "users:\n  - {username: d/1, password: x, role: device}\n", []string{`users[0]: username "d/1": invalid id`}},
		{"empty username", "users:\n  - {password: x, role: device}\n", []string{`users[0]: username "": invalid id: empty`}},
		{"duplicate username", "users:\n  - {username: d1, password: x, role: device}\n  - {username: d2, password: x, role: device}\n  - {username: d1, password: y, role: worker}\n",
			[]string{`users[2]: username "d1" is already used by users[0]`}},
		{"empty password", "users:\n  - {username: d1, role: device}\n", []string{`users[0]: user "d1" has an empty password`}},
		{"unknown role", "users:\n  - {username: d1, password: x, role: device}\n  - {username: a, password: x, role: admin}\n",
			[]string{`users[1]: user "a" has role "admin"; the roles are device, observer, worker`}},
		{"missing role", "users:\n  - {username: d1, password: x}\n", []string{`users[0]: user "d1" has role ""`}},
		{"every problem", "users:\n  - {username: '', role: x}\n", []string{"users[0]: username", "users[0]: user \"\" has an empty password", `has role "x"`}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCredentials(writeFile(t, "creds.yaml", tt.file))
			if err == nil {
				t.Fatal("LoadCredentials succeeded, want an error")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\ndoes not contain %q", err, w)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := LoadCredentials(filepath.Join(t.TempDir(), "none.yaml"))
		if !os.IsNotExist(unwrapAll(err)) {
			t.Fatalf("LoadCredentials: %v, want a not-exist error", err)
		}
	})
}

func TestYAMLRoundTrip(t *testing.T) {
	busy := Default()
	busy.Node = "edge-7"
	busy.Prefix = "site/7"
	busy.LogLevel, busy.LogFormat = "debug", "json"
	busy.MQTT.WSAddr = ""
	busy.MQTT.SessionExpiry = 90 * time.Minute
	busy.Auth = Auth{Enabled: true, CredentialsFile: "/etc/mqttinfer/creds.yaml"}
	busy.Throttle.Rate = 0.25
	busy.Throttle.Overrides = []ThrottleOverride{
		{Pattern: "cam-*", Rate: 1.5, Burst: 30, Costs: map[string]int{"detect": 20}},
		{Pattern: "gw-?", MaxInFlight: 16},
	}
	busy.Worker.MaxDeadline = 1500 * time.Millisecond
	busy.Worker.DefaultDeadline = 250 * time.Millisecond
	busy.Remote.ClientID = "w1"
	busy.Remote.Username = "w1"
	busy.Models.Costs = map[string]int{"anomaly": 1, "chat": 10, "yolo.v8": 3}

	for name, c := range map[string]Config{"default": Default(), "busy": busy} {
		t.Run(name, func(t *testing.T) {
			isolate(t)
			b, err := c.YAML()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Load(flags(t, "--config", writeFile(t, "printed.yaml", string(b))))
			if err != nil {
				t.Fatalf("Load(YAML()): %v\n%s", err, b)
			}
			if !reflect.DeepEqual(got, c) {
				t.Errorf("Load(YAML()) =\n%+v\nwant\n%+v\nYAML:\n%s", got, c, b)
			}
		})
	}
}

func TestYAMLShowsEveryKeyAndMasksThePassword(t *testing.T) {
	c := Default()
	c.Remote.Username, c.Remote.Password = "w1", "hunter2"
	b, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if strings.Contains(out, "hunter2") || !strings.Contains(out, `password: '***'`) {
		t.Errorf("password not masked:\n%s", out)
	}
	if c.Remote.Password != "hunter2" {
		t.Error("YAML changed the config")
	}
	for _, l := range leaves() {
		last := l.key[strings.LastIndex(l.key, ".")+1:]
		if !strings.Contains(out, last+":") {
			t.Errorf("YAML lacks %s:\n%s", l.key, out)
		}
	}
	if b, _ := Default().YAML(); !strings.Contains(string(b), "password: \"\"") {
		t.Errorf("an empty password should show as empty:\n%s", b)
	}
}

func TestExampleFileLoads(t *testing.T) {
	example, err := filepath.Abs("mqttinfer.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	isolate(t)
	c, err := Load(flags(t, "--config", example))
	if err != nil {
		t.Fatalf("Load(example): %v", err)
	}
	if err := c.Validate(builtin); err != nil {
		t.Fatalf("example does not validate: %v", err)
	}
	// The example sets every key, so it must mention each of them.
	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leaves() {
		last := l.key[strings.LastIndex(l.key, ".")+1:]
		if !strings.Contains(string(raw), last+":") {
			t.Errorf("example lacks %s", l.key)
		}
	}
	if len(c.Throttle.Overrides) == 0 || c.Models.Costs == nil {
		t.Errorf("example should show overrides and costs: %+v", c)
	}
}

// TestOptionsCoverFields keeps the option table, and so the flags, the
// environment and REFERENCE.md, in step with Config.
func TestOptionsCoverFields(t *testing.T) {
	keys := map[string]bool{}
	for _, l := range leaves() {
		keys[l.key] = true
	}
	seen := map[string]bool{}
	flagsSeen := map[Command]map[string]string{} // command → flag → key
	for _, o := range options {
		if !keys[o.key] {
			t.Errorf("option %q is not a field of Config", o.key)
		}
		if seen[o.key] {
			t.Errorf("option %q documented twice", o.key)
		}
		seen[o.key] = true
		if (o.flag == "") != (o.usage == "") || (o.flag == "") != (o.on == 0) || (o.alias != "" && o.flag == "") {
			t.Errorf("option %q: a flag needs a usage and commands, and an alias needs a flag", o.key)
		}
		for _, n := range commandNames {
			if o.on&n.cmd == 0 {
				continue
			}
			if flagsSeen[n.cmd] == nil {
				flagsSeen[n.cmd] = map[string]string{FlagConfig: "the config file"}
			}
			for _, f := range []string{o.flag, o.alias} {
				if other, dup := flagsSeen[n.cmd][f]; f != "" && dup {
					t.Errorf("%s: flag --%s sets both %s and %s", n.name, f, other, o.key)
				}
				flagsSeen[n.cmd][f] = o.key
			}
		}
		if o.doc == "" {
			t.Errorf("option %q has no doc", o.key)
		}
	}
	for k := range keys {
		if !seen[k] {
			t.Errorf("Config field %q has no entry in options", k)
		}
	}
}

var update = flag.Bool("update", false, "rewrite REFERENCE.md")

func TestReference(t *testing.T) {
	want := reference()
	if *update {
		if err := os.WriteFile("REFERENCE.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("REFERENCE.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Error("REFERENCE.md is out of date: run go test ./config -run TestReference -update")
	}
}
