package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/mqttinfer/mqttinfer/topics"
	"go.yaml.in/yaml/v3"
)

// The edits of `mqttinfer passwd`. Each reads the credentials file as a
// YAML tree, changes one entry (or, for HashPlaintext, the plain-text
// ones) and writes the file back through a temporary file and a rename, so
// that the other entries, their order and the comments stay as they were
// and a crash leaves the old file or the new one, never half of one.

// SetPassword sets the password of username in the credentials file at
// path, as a bcrypt hash at cost (0: DefaultCost): a new user is appended with role (which it needs),
// an existing one keeps its API keys and place, loses any plain-text
// password, and takes role unless role is "". A missing file is created
// with mode 0600. It reports whether the user was added.
func SetPassword(path, username string, role Role, password []byte, cost int) (added bool, err error) {
	if err := topics.ValidID(username); err != nil {
		return false, fmt.Errorf("username %q: %w", username, err)
	}
	if role != "" && !validRole(role) {
		return false, fmt.Errorf("role %q: the roles are device, observer, worker", role)
	}
	if len(password) == 0 {
		return false, errors.New("the password is empty")
	}
	hash, err := hashSecret(password, cost)
	if err != nil {
		return false, err
	}
	err = editCredentials(path, true, func(d *credDoc) error {
		entry := d.find(username)
		if entry == nil {
			if role == "" {
				return fmt.Errorf("%s is a new user: give its role (device, observer or worker)", username)
			}
			added = true
			entry = &yaml.Node{Kind: yaml.MappingNode}
			setKey(entry, "username", username)
			d.users.Content = append(d.users.Content, entry)
		}
		setKey(entry, "password_hash", hash)
		deleteKey(entry, "password")
		if role != "" {
			setKey(entry, "role", string(role))
		}
		return nil
	})
	return added, err
}

// AddAPIKey makes a new API key for username, an existing user of the
// credentials file at path, and appends the hash of its secret to the
// user's api_keys (hashed at cost, 0: DefaultCost), with a comment that shows the key's first characters and
// the date. It returns the key: it is shown this once, the file keeps only
// its hash. To revoke a key, delete its line.
func AddAPIKey(path, username string, cost int) (key string, err error) {
	key, hash, err := NewAPIKey(username, cost)
	if err != nil {
		return "", err
	}
	err = editCredentials(path, false, func(d *credDoc) error {
		entry := d.find(username)
		if entry == nil {
			return fmt.Errorf("no user %q: add it first with mqttinfer passwd --credentials %s --role ROLE %s", username, path, username)
		}
		keys := valueOf(entry, "api_keys")
		if keys == nil {
			keys = &yaml.Node{Kind: yaml.SequenceNode}
			entry.Content = append(entry.Content, scalar("api_keys"), keys)
		}
		if keys.Kind != yaml.SequenceNode {
			return fmt.Errorf("user %q: api_keys is not a list", username)
		}
		// Block style, so that each key can carry its comment.
		entry.Style &^= yaml.FlowStyle
		keys.Style &^= yaml.FlowStyle
		item := scalar(hash)
		item.LineComment = fmt.Sprintf("%s…, %s", key[:len(APIKeyPrefix)+len(username)+1+4], time.Now().UTC().Format(time.DateOnly))
		keys.Content = append(keys.Content, item)
		return nil
	})
	if err != nil {
		return "", err
	}
	return key, nil
}

// DeleteUser removes username from the credentials file at path.
func DeleteUser(path, username string) error {
	return editCredentials(path, false, func(d *credDoc) error {
		i := d.index(username)
		if i < 0 {
			return fmt.Errorf("no user %q", username)
		}
		d.users.Content = append(d.users.Content[:i], d.users.Content[i+1:]...)
		return nil
	})
}

// HashPlaintext replaces every plain-text password of the credentials file
// at path with its bcrypt hash at cost (0: DefaultCost), and returns the
// users changed.
func HashPlaintext(path string, cost int) (users []string, err error) {
	err = editCredentials(path, false, func(d *credDoc) error {
		for _, n := range d.users.Content {
			pw := valueOf(n, "password")
			if pw == nil {
				continue
			}
			name := "?"
			if u := valueOf(n, "username"); u != nil {
				name = u.Value
			}
			if valueOf(n, "password_hash") != nil {
				return fmt.Errorf("user %q has both password and password_hash: delete one of them first", name)
			}
			hash, err := hashSecret([]byte(pw.Value), cost)
			if err != nil {
				return fmt.Errorf("user %q: %w", name, err)
			}
			setKey(n, "password_hash", hash)
			deleteKey(n, "password")
			users = append(users, name)
		}
		return nil
	})
	return users, err
}

// credDoc is a credentials file as a YAML tree.
type credDoc struct {
	root  *yaml.Node // the document
	users *yaml.Node // the sequence under users:
}

// editCredentials reads the credentials file at path (an empty one when it
// does not exist and create is set), applies edit, and writes it back with
// its mode (0600 for a new file).
func editCredentials(path string, create bool, edit func(*credDoc) error) error {
	mode := fs.FileMode(0o600)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	case errors.Is(err, fs.ErrNotExist) && create:
	default:
		return fmt.Errorf("credentials file: %w", err)
	}
	d, err := parseCredDoc(b)
	if err != nil {
		return fmt.Errorf("credentials file %s: %w", path, err)
	}
	if err := edit(d); err != nil {
		return fmt.Errorf("credentials file %s: %w", path, err)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(d.root); err != nil {
		return fmt.Errorf("credentials file %s: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("credentials file %s: %w", path, err)
	}
	return writeAtomically(path, buf.Bytes(), mode)
}

// parseCredDoc parses a credentials file into a tree, with a users list
// added when it has none.
func parseCredDoc(b []byte) (*credDoc, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, err
	}
	if root.Kind == 0 {
		root.Kind = yaml.DocumentNode
	}
	if len(root.Content) == 0 {
		root.Content = []*yaml.Node{{Kind: yaml.MappingNode}}
	}
	top := root.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, errors.New("not a mapping with a users: list")
	}
	users := valueOf(top, "users")
	switch {
	case users == nil:
		users = &yaml.Node{Kind: yaml.SequenceNode}
		top.Content = append(top.Content, scalar("users"), users)
	case users.Kind == yaml.ScalarNode && users.Tag == "!!null": // "users:" with nothing after it
		*users = yaml.Node{Kind: yaml.SequenceNode}
	}
	if users.Kind != yaml.SequenceNode {
		return nil, errors.New("users: is not a list")
	}
	users.Style &^= yaml.FlowStyle // users: [] must not keep every entry on one line
	for i, n := range users.Content {
		if n.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("users[%d] is not a mapping", i)
		}
	}
	return &credDoc{root: &root, users: users}, nil
}

// find returns the entry of username, or nil.
func (d *credDoc) find(username string) *yaml.Node {
	if i := d.index(username); i >= 0 {
		return d.users.Content[i]
	}
	return nil
}

// index returns the index of username's entry, or -1.
func (d *credDoc) index(username string) int {
	for i, n := range d.users.Content {
		if v := valueOf(n, "username"); v != nil && v.Value == username {
			return i
		}
	}
	return -1
}

// valueOf returns the value of key in mapping m, or nil.
func valueOf(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// setKey sets key to the string value in mapping m, in its place when it
// is there, else at the end.
func setKey(m *yaml.Node, key, value string) {
	if v := valueOf(m, key); v != nil {
		*v = *scalar(value)
		return
	}
	m.Content = append(m.Content, scalar(key), scalar(value))
}

// deleteKey removes key from mapping m.
func deleteKey(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}

func scalar(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// writeAtomically replaces the file at path with b, with mode perm.
func writeAtomically(path string, b []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("credentials file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("credentials file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("credentials file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("credentials file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("credentials file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("credentials file: %w", err)
	}
	return nil
}
