package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/config"
)

// runWithInput executes mqttinfer with args and stdin, and returns what it
// wrote on standard output and standard error.
func runWithInput(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := rootCmd()
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err = root.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

func TestPasswd(t *testing.T) {
	isolate(t)
	creds := filepath.Join(t.TempDir(), "creds.yaml")
	passwd := func(stdin string, args ...string) string {
		t.Helper()
		out, _, err := runWithInput(t, stdin, append([]string{"passwd", "--cost", "4", "--credentials", creds}, args...)...)
		if err != nil {
			t.Fatalf("passwd %v: %v", args, err)
		}
		return out
	}
	if out := passwd("pw-thermo\n", "--role", "device", "thermo-1"); out != "added thermo-1 in "+creds+"\n" {
		t.Errorf("add: %q", out)
	}
	if st, err := os.Stat(creds); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("created file: %v %v", err, st.Mode())
	}
	passwd("pw-ops\r\n", "--role", "observer", "ops")
	passwd("pw-w1", "--role", "worker", "w1") // no newline at the end
	key, stderr, err := runWithInput(t, "", "passwd", "--cost", "4", "--credentials", creds, "--api-key", "thermo-1")
	if err != nil || !strings.Contains(stderr, "shown once") {
		t.Fatalf("--api-key: %v %q", err, stderr)
	}
	key = strings.TrimSpace(key)
	if out := passwd("pw-thermo-2\n", "thermo-1"); !strings.HasPrefix(out, "updated thermo-1") {
		t.Errorf("replace: %q", out)
	}

	users, err := config.LoadCredentials(creds)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.String())
	}
	if got := strings.Join(names, ", "); got != "thermo-1 (device), ops (observer), w1 (worker)" {
		t.Errorf("users %s", got)
	}
	a, err := config.NewAuthenticator(users)
	if err != nil {
		t.Fatal(err)
	}
	for user, pw := range map[string]string{"thermo-1": "pw-thermo-2", "ops": "pw-ops", "w1": "pw-w1"} {
		if _, err := a.Password(user, []byte(pw)); err != nil {
			t.Errorf("%s/%s: %v", user, pw, err)
		}
	}
	if c, err := a.APIKey(key); err != nil || c.Username != "thermo-1" {
		t.Errorf("the printed key %q: %v %v", key, c, err)
	}
	raw, _ := os.ReadFile(creds)
	if strings.Contains(string(raw), "pw-") || strings.Contains(string(raw), key) {
		t.Errorf("a secret in the file:\n%s", raw)
	}

	passwd("", "--delete", "ops")
	if users, _ := config.LoadCredentials(creds); len(users) != 2 {
		t.Errorf("after --delete: %v", users)
	}

	for _, tt := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"x\n", []string{"--credentials", creds, "newbie"}, "give its role"},
		{"\n", []string{"--credentials", creds, "--role", "device", "d9"}, "no password on standard input"},
		{"x\n", []string{"--credentials", creds, "--role", "admin", "d9"}, `role "admin"`},
		{"", []string{"--credentials", creds, "--api-key", "nobody"}, `no user "nobody"`},
		{"", []string{"--credentials", creds, "--api-key", "--role", "device", "d9"}, "none of the others can be"},
		{"x\n", []string{"--role", "device", "d9"}, `"credentials" not set`},
		{"", []string{"--credentials", creds}, "accepts 1 arg"},
	} {
		_, _, err := runWithInput(t, tt.stdin, append([]string{"passwd"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("passwd %v: %v, want %q", tt.args, err, tt.want)
		}
	}
}

func TestPasswdHashPlaintext(t *testing.T) {
	isolate(t)
	creds := filepath.Join(t.TempDir(), "creds.yaml")
	if err := os.WriteFile(creds, []byte("users:\n  - {username: d1, password: pw-d1, role: device}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.LoadCredentials(creds); err == nil || !strings.Contains(err.Error(), "--hash-plaintext") {
		t.Fatalf("plain text loaded: %v", err)
	}
	out, _, err := runWithInput(t, "", "passwd", "--cost", "4", "--credentials", creds, "--hash-plaintext")
	if err != nil || !strings.Contains(out, "1 users") {
		t.Fatalf("--hash-plaintext: %q %v", out, err)
	}
	users, err := config.LoadCredentials(creds)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := config.NewAuthenticator(users)
	if _, err := a.Password("d1", []byte("pw-d1")); err != nil {
		t.Error(err)
	}
}
