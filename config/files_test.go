package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

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
