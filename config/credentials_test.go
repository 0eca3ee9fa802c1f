package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mqttinfer/mqttinfer/internal/testenv"
)

// cost is the bcrypt cost of the tests' hashes: the lowest.
const cost = bcrypt.MinCost

// hash is the bcrypt hash of s at the lowest cost.
func hash(t testing.TB, s string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(s), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestLoadCredentials(t *testing.T) {
	d1, ops, key := hash(t, "secret"), hash(t, "s3cret"), hash(t, "k")
	good := fmt.Sprintf(`users:
  - {username: d1, password_hash: "%s", role: device, api_keys: ["%s"]}
  - username: ops
    password_hash: %s
    role: observer
  - {username: w-1.a, api_keys: ["%s"], role: worker}
  - {username: cam-7, role: device}
`, d1, key, ops, key)
	got, err := LoadCredentials(writeFile(t, "creds.yaml", good))
	if err != nil {
		t.Fatalf("LoadCredentials: %v", err)
	}
	want := Credentials{
		{Username: "d1", PasswordHash: d1, Role: RoleDevice, APIKeys: []string{key}},
		{Username: "ops", PasswordHash: ops, Role: RoleObserver},
		{Username: "w-1.a", Role: RoleWorker, APIKeys: []string{key}},
		{Username: "cam-7", Role: RoleDevice}, // logs in with a client certificate only
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadCredentials = %+v, want %+v", got, want)
	}
	if s := fmt.Sprint(got[0]); strings.Contains(s, "$2") {
		t.Errorf("a Credential prints its hash: %s", s)
	}
	if w := got.Warning(); w != "" {
		t.Errorf("hashed file warns %q", w)
	}

	plain := "users:\n  - {username: d1, password: secret, role: device}\n  - {username: ops, password_hash: \"" + ops + "\", role: observer}\n"
	t.Run("plain text only when insecure", func(t *testing.T) {
		_, err := LoadCredentials(writeFile(t, "creds.yaml", plain))
		for _, w := range []string{`users[0]: user "d1" has a plain-text password`, "mqttinfer passwd --hash-plaintext --credentials", "insecure_plaintext: true"} {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("plain text without insecure_plaintext: %v, want %q", err, w)
			}
		}
		got, err := LoadCredentials(writeFile(t, "creds.yaml", "insecure_plaintext: true\n"+plain))
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Password != "secret" || !strings.Contains(got.Warning(), "plain-text passwords for d1 ") {
			t.Errorf("insecure file: %+v, warning %q", got, got.Warning())
		}
	})

	bad := []struct {
		name, file string
		wants      []string
	}{
		{"empty file", "", []string{"no users", "mqttinfer passwd"}},
		{"empty list", "users: []\n", []string{"no users"}},
		{"not YAML", "users: [\n", []string{"creds.yaml"}},
		{"unknown field", "users:\n  - {username: d1, password_hash: x, role: device, admin: true}\n", []string{"field admin not found"}},
		{"unknown top-level key", "user:\n  - {username: d1, role: device}\n", []string{"field user not found"}},
		{"bad username", "users:\n  - {username: d/1, password_hash: '" + d1 + "', role: device}\n", []string{`users[0]: username "d/1": invalid id`}},
		{"empty username", "users:\n  - {password_hash: '" + d1 + "', role: device}\n", []string{`users[0]: username "": invalid id: empty`}},
		{"duplicate username", "users:\n  - {username: d1, password_hash: '" + d1 + "', role: device}\n  - {username: d2, password_hash: '" + d1 + "', role: device}\n  - {username: d1, password_hash: '" + d1 + "', role: worker}\n",
			[]string{`users[2]: username "d1" is already used by users[0]`}},
		{"a password in password_hash", "users:\n  - {username: d1, password_hash: secret, role: device}\n", []string{`users[0]: user "d1": password_hash is not a bcrypt hash`}},
		{"a key in api_keys", "users:\n  - {username: d1, api_keys: [mqi_d1_abc], role: device}\n", []string{`users[0]: user "d1": api_keys[0] is not a bcrypt hash`}},
		{"both", "insecure_plaintext: true\nusers:\n  - {username: d1, password: x, password_hash: '" + d1 + "', role: device}\n", []string{"both password and password_hash"}},
		{"unknown role", "users:\n  - {username: d1, password_hash: '" + d1 + "', role: device}\n  - {username: a, password_hash: '" + d1 + "', role: admin}\n",
			[]string{`users[1]: user "a" has role "admin"; the roles are device, observer, worker`}},
		{"missing role", "users:\n  - {username: d1, password_hash: '" + d1 + "'}\n", []string{`users[0]: user "d1" has role ""`}},
		{"every problem", "users:\n  - {username: '', password_hash: x, role: x}\n", []string{"users[0]: username", `users[0]: user "": password_hash is not a bcrypt hash`, `has role "x"`}},
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

// testKey is an API key of d1 and its hash.
func testKey(t testing.TB) (key, hash string) {
	t.Helper()
	key, hash, err := NewAPIKey("d1", cost)
	if err != nil {
		t.Fatal(err)
	}
	return key, hash
}

func TestAuthenticator(t *testing.T) {
	key, keyHash := testKey(t)
	a, err := NewAuthenticator([]Credential{
		{Username: "d1", PasswordHash: hash(t, "pw-d1"), Role: RoleDevice, APIKeys: []string{hash(t, "another"), keyHash}},
		{Username: "ops", Password: "pw-ops", Role: RoleObserver},
		{Username: "w1", APIKeys: []string{keyHash}, Role: RoleWorker},
		{Username: "cam-7", Role: RoleDevice},
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	bcrypts := func() int64 { return a.bcrypts.Load() }

	for _, tt := range []struct {
		user, password string
		want           error
	}{
		{"d1", "pw-d1", nil},
		{"d1", "pw-d2", ErrWrongPassword},
		{"d1", "", ErrWrongPassword},
		{"d1", "pw-d1" + strings.Repeat("x", 80), ErrWrongPassword},
		{"nobody", "pw-d1", ErrUnknownUser},
		{"", "", ErrNoCredentials},
		{"ops", "pw-ops", nil},
		{"ops", "pw-op", ErrWrongPassword},
		{"w1", "anything", ErrWrongPassword}, // keys only
		{"cam-7", "", ErrWrongPassword},      // a client certificate only
	} {
		before := bcrypts()
		c, err := a.Password(tt.user, []byte(tt.password))
		if !errors.Is(err, tt.want) || err == nil && c.Username != tt.user {
			t.Errorf("Password(%q, %q) = %v, %v; want %v", tt.user, tt.password, c, err, tt.want)
		}
		// Unknown users cost a bcrypt like wrong passwords; plain text none.
		if spent := bcrypts() - before; tt.user != "ops" && tt.want != ErrNoCredentials && spent != 1 {
			t.Errorf("Password(%q, %q) made %d bcrypt comparisons, want 1", tt.user, tt.password, spent)
		}
	}

	_, otherHash := testKey(t)
	for _, tt := range []struct {
		key  string
		user string
		want error
	}{
		{key, "d1", nil},
		{strings.Replace(key, "mqi_d1_", "mqi_w1_", 1), "w1", nil}, // the same secret is also w1's
		{strings.Replace(key, "mqi_d1_", "mqi_ops_", 1), "", ErrUnknownAPIKey},
		{strings.Replace(key, "mqi_d1_", "mqi_nobody_", 1), "", ErrUnknownAPIKey},
		{key[:len(key)-1] + "g", "", ErrUnknownAPIKey},
		{key[:len(key)-1], "", ErrUnknownAPIKey},
		{"pw-d1", "", ErrUnknownAPIKey},
		{"", "", ErrUnknownAPIKey},
	} {
		c, err := a.APIKey(tt.key)
		if !errors.Is(err, tt.want) || c.Username != tt.user {
			t.Errorf("APIKey(%q) = %v, %v; want %s, %v", tt.key, c, err, tt.user, tt.want)
		}
	}
	if otherHash == keyHash {
		t.Fatal("two keys share a hash")
	}

	// A success is remembered: a device that logs in again costs no
	// bcrypt, for a while. A failure is never remembered.
	before := bcrypts()
	for range 5 {
		if _, err := a.Password("d1", []byte("pw-d1")); err != nil {
			t.Fatal(err)
		}
		if _, err := a.APIKey(key); err != nil {
			t.Fatal(err)
		}
	}
	if spent := bcrypts() - before; spent != 0 {
		t.Errorf("remembered logins made %d bcrypt comparisons", spent)
	}
	before = bcrypts()
	for range 3 {
		if _, err := a.Password("d1", []byte("pw-d2")); err == nil {
			t.Fatal("wrong password accepted")
		}
	}
	if spent := bcrypts() - before; spent != 3 {
		t.Errorf("3 wrong passwords made %d bcrypt comparisons, want 3", spent)
	}
	now = now.Add(verifiedFor)
	before = bcrypts()
	if _, err := a.Password("d1", []byte("pw-d1")); err != nil || bcrypts()-before != 1 {
		t.Errorf("after %v: %v, %d bcrypt comparisons, want 1", verifiedFor, err, bcrypts()-before)
	}

	// At most proofsPerUser are remembered per user.
	many := make([]string, 0, 8)
	creds := Credential{Username: "m", Role: RoleDevice}
	for i := range 8 {
		many = append(many, fmt.Sprint("pw", i))
		creds.APIKeys = append(creds.APIKeys, hash(t, many[i]))
	}
	b, err := NewAuthenticator([]Credential{creds})
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range many {
		if !b.verify("m", "api_key", creds.APIKeys, []byte(pw)) {
			t.Fatalf("%s refused", pw)
		}
	}
	if n := len(b.proofs["m"]); n != proofsPerUser {
		t.Errorf("%d remembered proofs, want %d", n, proofsPerUser)
	}

	if c, ok := a.Lookup("ops"); !ok || c.Role != RoleObserver {
		t.Errorf("Lookup(ops) = %v, %v", c, ok)
	}
	if _, err := NewAuthenticator([]Credential{{Username: "x", PasswordHash: "nope", Role: RoleDevice}}); err == nil {
		t.Error("NewAuthenticator took a bad hash")
	}
}

func TestAPIKeyFormat(t *testing.T) {
	key, h := testKey(t)
	user, secret, ok := ParseAPIKey(key)
	if !ok || user != "d1" || len(secret) != 64 || !strings.HasPrefix(key, "mqi_d1_") {
		t.Fatalf("ParseAPIKey(%q) = %q, %q, %v", key, user, secret, ok)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), secret) != nil {
		t.Error("the hash is not of the key's secret")
	}
	if u, _, ok := ParseAPIKey("mqi_a_b-c_" + strings.Repeat("0", 64)); !ok || u != "a_b-c" {
		t.Errorf("a username with '_': %q, %v", u, ok)
	}
	for _, k := range []string{"", "mqi_", "mqi__" + strings.Repeat("0", 64), "mqi_d1" + strings.Repeat("0", 64), "xyz_d1_" + strings.Repeat("0", 64), "mqi_d1_" + strings.Repeat("A", 64)} {
		if _, _, ok := ParseAPIKey(k); ok {
			t.Errorf("ParseAPIKey(%q) ok", k)
		}
	}
}

func TestLoginLog(t *testing.T) {
	var buf testenv.LogBuffer
	l := NewLoginLog(buf.Logger())
	var mu sync.Mutex
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	lines := func() []string { return strings.Split(strings.TrimSpace(buf.String()), "\n") }

	for i := range 25 {
		l.Refused("login refused", "username", fmt.Sprint("u", i), "reason", "unknown user")
	}
	if got := lines(); len(got) != loginLogBurst || !strings.Contains(got[0], "level=INFO") || !strings.Contains(got[0], "username=u0 reason=\"unknown user\"") {
		t.Fatalf("25 refusals at once logged:\n%s", strings.Join(got, "\n"))
	}
	mu.Lock()
	now = now.Add(loginLogEvery)
	mu.Unlock()
	l.Refused("login refused", "username", "u25", "reason", "unknown user")
	if got := lines(); len(got) != loginLogBurst+1 || !strings.Contains(got[len(got)-1], "username=u25 reason=\"unknown user\" suppressed=15") {
		t.Fatalf("after a second:\n%s", strings.Join(got, "\n"))
	}

	// The count of lines left out is logged even when the flood stops.
	l.Refused("login refused", "username", "u26")
	l.Refused("login refused", "username", "u27")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "refused logins not logged") {
		if time.Now().After(deadline) {
			t.Fatalf("no summary:\n%s", buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if last := lines()[len(lines())-1]; !strings.Contains(last, "suppressed=2") {
		t.Errorf("summary %q", last)
	}

	// Long values are cut.
	buf.Reset()
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	l.Refused("login refused", "username", strings.Repeat("x", 70000))
	if n := len(buf.String()); n > 400 {
		t.Errorf("a 70000-byte username made a %d-byte line", n)
	}
}

func TestPasswd(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "creds.yaml")
	mustSet := func(user string, role Role, pw string, wantAdded bool) {
		t.Helper()
		added, err := SetPassword(path, user, role, []byte(pw), cost)
		if err != nil || added != wantAdded {
			t.Fatalf("SetPassword(%s): %v, added %v", user, err, added)
		}
	}
	mustSet("thermo-1", RoleDevice, "pw1", true)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("new file: %v, mode %v", err, st.Mode())
	}
	mustSet("ops", RoleObserver, "pw-ops", true)
	key, err := AddAPIKey(path, "thermo-1", cost)
	if err != nil {
		t.Fatal(err)
	}
	// A hand-edited entry and a comment survive the edits around them.
	b, _ := os.ReadFile(path)
	hand := strings.Replace(string(b), "users:\n", "# fleet A\nusers:\n  - {username: w1, password_hash: '"+hash(t, "pw-w1")+"', role: worker}  # by hand\n", 1)
	if err := os.WriteFile(path, []byte(hand), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	mustSet("thermo-1", "", "pw1-new", false)
	mustSet("ops", RoleWorker, "pw-ops", false)

	creds, err := LoadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range creds {
		names = append(names, c.String())
	}
	if got := strings.Join(names, ", "); got != "w1 (worker), thermo-1 (device), ops (worker)" {
		t.Errorf("users %s", got)
	}
	out, _ := os.ReadFile(path)
	for _, w := range []string{"# fleet A", "# by hand", "# mqi_thermo-1_" + key[len("mqi_thermo-1_"):][:4] + "…, 20"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("file lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(string(out), key) {
		t.Errorf("the file holds the key itself:\n%s", out)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("the edit changed the mode to %v", st.Mode().Perm())
	}
	a, err := NewAuthenticator(creds)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.APIKey(key); err != nil || c.Username != "thermo-1" {
		t.Errorf("the new key: %v, %v", c, err)
	}
	for user, pw := range map[string]string{"thermo-1": "pw1-new", "ops": "pw-ops", "w1": "pw-w1"} {
		if _, err := a.Password(user, []byte(pw)); err != nil {
			t.Errorf("%s: %v", user, err)
		}
	}
	if _, err := a.Password("thermo-1", []byte("pw1")); err == nil {
		t.Error("the old password still works")
	}

	if err := DeleteUser(path, "ops"); err != nil {
		t.Fatal(err)
	}
	if creds, _ := LoadCredentials(path); len(creds) != 2 {
		t.Errorf("after delete: %v", creds)
	}
	for name, err := range map[string]error{
		"new user without a role": second(SetPassword(path, "new", "", []byte("x"), cost)),
		"bad role":                second(SetPassword(path, "new", "admin", []byte("x"), cost)),
		"bad username":            second(SetPassword(path, "a/b", RoleDevice, []byte("x"), cost)),
		"empty password":          second(SetPassword(path, "new", RoleDevice, nil, cost)),
		"long password":           second(SetPassword(path, "new", RoleDevice, bytes.Repeat([]byte("x"), 73), cost)),
		"key for nobody":          second(AddAPIKey(path, "nobody", cost)),
		"delete nobody":           DeleteUser(path, "nobody"),
		"key without a file":      second(AddAPIKey(filepath.Join(dir, "none.yaml"), "x", cost)),
		"cost too low":            second(SetPassword(path, "new", RoleDevice, []byte("x"), 3)),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestHashPlaintext(t *testing.T) {
	path := writeFile(t, "creds.yaml", "insecure_plaintext: true\nusers:\n  - {username: d1, password: pw-d1, role: device}\n  - {username: ops, password_hash: '"+hash(t, "pw-ops")+"', role: observer}\n")
	users, err := HashPlaintext(path, cost)
	if err != nil || !reflect.DeepEqual(users, []string{"d1"}) {
		t.Fatalf("HashPlaintext: %v, %v", users, err)
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "pw-d1") {
		t.Errorf("plain text left:\n%s", b)
	}
	creds, err := LoadCredentials(path)
	if err != nil || creds.Warning() != "" {
		t.Fatalf("after HashPlaintext: %v, %q", err, creds.Warning())
	}
	a, _ := NewAuthenticator(creds)
	if _, err := a.Password("d1", []byte("pw-d1")); err != nil {
		t.Error(err)
	}
}
