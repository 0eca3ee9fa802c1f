package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mqttinfer/mqttinfer/topics"
)

// FuzzLoadCredentials loads any bytes as a credentials file. It must never
// panic, and a file it accepts holds at least one user with a valid
// username (which becomes a device id).
func FuzzLoadCredentials(f *testing.F) {
	for _, s := range []string{
		"users:\n  - {username: thermo-1, password: s3cret, role: device}\n  - {username: ops, password: s3cret, role: observer}\n  - {username: w1, password: s3cret, role: worker}\n",
		"insecure_plaintext: true\nusers:\n  - {username: d1, password: secret, role: device}\n",
		"users:\n  - username: cam-7\n    password_hash: $2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy\n    role: device\n    api_keys: [$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy]\n",
		"users:\n  - {username: d1, password: a, role: device}\n  - {username: d1, password: b, role: device}\n",
		"users:\n  - {username: \"d 1\", password: a, role: admin, extra: 1}\n",
		"users: []\n", "users:\n", "", "---\n", "users: {username: d1}\n", "users:\n  - [d1, a, device]\n",
		"a: &a [*a, *a]\nusers: *a\n", "users:\n  - &u {username: d1, password: a, role: device}\n  - *u\n",
		"users:\n  - {username: d1, password: a, role: device}\n---\nusers: []\n", "\t", "users:\n  - {username: !!binary ZDE=, password: a, role: device}\n",
	} {
		f.Add([]byte(s))
	}
	path := filepath.Join(f.TempDir(), "credentials.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		creds, err := LoadCredentials(path)
		if err != nil {
			return
		}
		valid := 0
		for _, c := range creds {
			if topics.ValidID(c.Username) == nil {
				valid++
			}
		}
		if valid == 0 {
			t.Fatalf("LoadCredentials accepted %q without a user with a valid username: %v", data, creds)
		}
	})
}
