package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mqttinfer/mqttinfer/topics"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// Role says what an authenticated client may do, on MQTT and over HTTP.
type Role string

// The roles of the credentials file.
const (
	// RoleDevice may publish requests under its own id and read its own
	// results, the model catalog and the status topics; over HTTP it runs
	// inference requests as itself and reads the catalog.
	RoleDevice Role = "device"
	// RoleObserver may read every result, the catalog and status, and publish
	// nothing; over HTTP it reads the catalog and /metrics, and may not infer.
	RoleObserver Role = "observer"
	// RoleWorker may take requests and publish results (a remote worker);
	// over HTTP it reads the catalog and /metrics, and may not infer.
	RoleWorker Role = "worker"
)

// Roles lists the known roles.
func Roles() []Role { return []Role{RoleDevice, RoleObserver, RoleWorker} }

// Credential is one user of the credentials file. With auth on, a device's
// id is its Username, on MQTT and over HTTP.
type Credential struct {
	// Username is the login name, 1–64 bytes of [A-Za-z0-9._-].
	Username string `yaml:"username"`
	// PasswordHash is the bcrypt hash of the user's password ("$2a$10$…"),
	// as `mqttinfer passwd` writes it.
	PasswordHash string `yaml:"password_hash,omitempty"`
	// Password is a password in plain text. LoadCredentials accepts it only
	// from a file that says insecure_plaintext: true.
	Password string `yaml:"password,omitempty"`
	// Role is what the user may do.
	Role Role `yaml:"role"`
	// APIKeys are the bcrypt hashes of the secret parts of the user's HTTP
	// API keys (see NewAPIKey), sent as "Authorization: Bearer <key>".
	APIKeys []string `yaml:"api_keys,omitempty"`
}

// String shows the username and role, never a password or a hash.
func (c Credential) String() string { return fmt.Sprintf("%s (%s)", c.Username, c.Role) }

// Credentials are the users of a credentials file, in its order.
type Credentials []Credential

// Warning is what the service should log at start about cs, or "": the
// users whose passwords are in plain text (a file with insecure_plaintext).
func (cs Credentials) Warning() string {
	var plain []string
	for _, c := range cs {
		if c.Password != "" {
			plain = append(plain, c.Username)
		}
	}
	if len(plain) == 0 {
		return ""
	}
	return fmt.Sprintf("credentials file: plain-text passwords for %s (insecure_plaintext is true): anyone who reads the file can log in as them; hash them with `mqttinfer passwd --hash-plaintext --credentials <file>`",
		strings.Join(plain, ", "))
}

// credentialsFile is the layout of the credentials file.
type credentialsFile struct {
	// InsecurePlaintext allows password: entries in plain text.
	InsecurePlaintext bool         `yaml:"insecure_plaintext,omitempty"`
	Users             []Credential `yaml:"users"`
}

// LoadCredentials reads the credentials file at path:
//
//	users:
//	  - {username: thermo-1, password_hash: "$2a$10$…", role: device, api_keys: ["$2a$10$…"]}
//	  - {username: ops, password_hash: "$2a$10$…", role: observer}
//	  - {username: w1, password_hash: "$2a$10$…", role: worker}
//
// `mqttinfer passwd` writes the entries. Every username must be a valid id
// (it becomes the device id) and unique, every role one of Roles, and
// hashes must be bcrypt hashes. A user without a password or an API key
// logs in only with a client certificate that names it (tls.client_ca_file). A plain-text password: is refused unless the file says
// insecure_plaintext: true at the top level; the service should then log
// Credentials.Warning. Unknown fields are an error. All problems are
// reported together, each with its entry index.
func LoadCredentials(path string) (Credentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f credentialsFile
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	if len(f.Users) == 0 {
		return nil, fmt.Errorf("credentials file %s: no users (expected a list under \"users:\"; add one with mqttinfer passwd --credentials %s --role device USERNAME)", path, path)
	}
	errs := checkUsers(f.Users)
	if !f.InsecurePlaintext {
		for i, u := range f.Users {
			if u.Password != "" {
				errs = append(errs, fmt.Errorf("users[%d]: user %q has a plain-text password: hash it with `mqttinfer passwd --hash-plaintext --credentials %s` (or, for development only, put insecure_plaintext: true at the top of the file)", i, u.Username, path))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	return f.Users, nil
}

// checkUsers reports every problem of users but plain text, each with its
// entry index.
func checkUsers(users []Credential) []error {
	var errs []error
	seen := map[string]int{}
	for i, u := range users {
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("users[%d]: %s", i, fmt.Sprintf(format, args...)))
		}
		if err := topics.ValidID(u.Username); err != nil {
			bad("username %q: %v", u.Username, err)
		} else if j, dup := seen[u.Username]; dup {
			bad("username %q is already used by users[%d]", u.Username, j)
		} else {
			seen[u.Username] = i
		}
		switch {
		case u.Password != "" && u.PasswordHash != "":
			bad("user %q has both password and password_hash: keep password_hash", u.Username)
		case u.PasswordHash != "" && !isBcrypt(u.PasswordHash):
			bad("user %q: password_hash is not a bcrypt hash like \"$2a$10$…\": make one with mqttinfer passwd", u.Username)
		}
		for j, k := range u.APIKeys {
			if !isBcrypt(k) {
				bad("user %q: api_keys[%d] is not a bcrypt hash like \"$2a$10$…\" (the file holds hashes, never keys): make a key with mqttinfer passwd --api-key", u.Username, j)
			}
		}
		if !validRole(u.Role) {
			bad("user %q has role %q; the roles are device, observer, worker", u.Username, u.Role)
		}
	}
	return errs
}

func validRole(r Role) bool {
	switch r {
	case RoleDevice, RoleObserver, RoleWorker:
		return true
	}
	return false
}

// isBcrypt reports whether h looks like a bcrypt hash ($2a$, $2b$ or $2y$,
// a valid cost, the full length).
func isBcrypt(h string) bool {
	_, err := bcrypt.Cost([]byte(h))
	return err == nil
}
