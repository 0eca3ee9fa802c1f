package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mqttinfer/mqttinfer/topics"
	"go.yaml.in/yaml/v3"
)

// Role says what an authenticated MQTT client may do.
type Role string

// The roles of the credentials file.
const (
	// RoleDevice may publish requests under its own id and read its own
	// results, the model catalog and the status topics.
	RoleDevice Role = "device"
	// RoleObserver may read every result, the catalog and status, and publish nothing.
	RoleObserver Role = "observer"
	// RoleWorker may take requests and publish results (a remote worker).
	RoleWorker Role = "worker"
)

// Roles lists the known roles.
func Roles() []Role { return []Role{RoleDevice, RoleObserver, RoleWorker} }

// Credential is one login of the credentials file. With auth on, a device's
// id is its Username.
type Credential struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	Role     Role   `yaml:"role"`
}

// String shows the username and role, never the password.
func (c Credential) String() string { return fmt.Sprintf("%s (%s)", c.Username, c.Role) }

// credentialsFile is the layout of the credentials file.
type credentialsFile struct {
	Users []Credential `yaml:"users"`
}

// LoadCredentials reads the credentials file at path:
//
//	users:
//	  - {username: d1, password: secret, role: device}
//	  - {username: ops, password: s3cret, role: observer}
//	  - {username: w1, password: s3cr3t, role: worker}
//
// Every username must be a valid id (it becomes the device id) and unique,
// every password non-empty and every role one of Roles. Unknown fields are an
// error. All problems are reported together, each with its entry index.
// Passwords are stored in plain text: keep the file readable only by the service.
func LoadCredentials(path string) ([]Credential, error) {
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
		return nil, fmt.Errorf("credentials file %s: no users (expected a list under \"users:\")", path)
	}
	var errs []error
	seen := map[string]int{}
	for i, u := range f.Users {
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
		if u.Password == "" {
			bad("user %q has an empty password", u.Username)
		}
		switch u.Role {
		case RoleDevice, RoleObserver, RoleWorker:
		default:
			bad("user %q has role %q; the roles are device, observer, worker", u.Username, u.Role)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	return f.Users, nil
}
