package config

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Why a login was refused. The messages are the reasons logged.
var (
	// ErrNoCredentials: the client sent neither a username nor a key.
	ErrNoCredentials = errors.New("no credentials")
	// ErrUnknownUser: the username is not in the credentials file.
	ErrUnknownUser = errors.New("unknown user")
	// ErrWrongPassword: the user exists, the password is not its own.
	ErrWrongPassword = errors.New("wrong password")
	// ErrUnknownAPIKey: the key is malformed, names an unknown user, or is
	// none of that user's keys.
	ErrUnknownAPIKey = errors.New("unknown API key")
)

// APIKeyPrefix starts every API key: "mqi_<username>_<64 hex digits>".
const APIKeyPrefix = "mqi_"

// apiKeySecretLen is the length of an API key's secret part: 32 random
// bytes in hex, within bcrypt's 72 bytes.
const apiKeySecretLen = 64

// maxSecretLen is the longest password bcrypt can check; it ignores the
// bytes past it, so longer ones are refused rather than truncated.
const maxSecretLen = 72

// DefaultCost is the bcrypt cost of the hashes `mqttinfer passwd` makes
// unless told otherwise: ~50–100 ms a hash on a server core. Each step up
// doubles the time of a login that is not remembered.
const DefaultCost = bcrypt.DefaultCost

// verifiedFor is how long a successful verification is remembered, so that
// a device reconnecting or an HTTP client sending Basic on every request
// costs one bcrypt per verifiedFor instead of one per login.
const verifiedFor = 10 * time.Minute

// proofsPerUser bounds the remembered verifications of one user (its
// password and a few API keys); the oldest makes room.
const proofsPerUser = 4

// Authenticator checks logins against the users of a credentials file:
// passwords (MQTT CONNECT, HTTP Basic) and API keys (HTTP Bearer). It is
// safe for concurrent use. Successful bcrypt verifications are remembered
// for 10 minutes as an HMAC of the secret under a key drawn at start, never
// the secret itself; failures are never remembered, so each wrong guess
// costs a bcrypt. An unknown user costs a bcrypt too, so that the time of a
// refusal does not tell which usernames exist. At most half the CPUs run
// bcrypt at once (at least one), so that a flood of bad logins slows other
// logins down but leaves the rest of the service its share.
type Authenticator struct {
	users   map[string]Credential
	key     []byte        // HMAC key of the remembered verifications
	dummy   []byte        // a hash to spend a bcrypt on for unknown users
	slots   chan struct{} // one per bcrypt that may run at once
	now     func() time.Time
	bcrypts atomic.Int64 // bcrypt comparisons made, for tests

	mu     sync.Mutex
	proofs map[string][]proof // by username
}

// proof is one remembered successful verification.
type proof struct {
	sum   [sha256.Size]byte
	until time.Time
}

// NewAuthenticator returns an Authenticator for users. They are checked as
// LoadCredentials checks a file, except that plain-text passwords are
// accepted (the file's insecure_plaintext policy is LoadCredentials').
func NewAuthenticator(users []Credential) (*Authenticator, error) {
	if err := errors.Join(checkUsers(users)...); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	a := &Authenticator{
		users:  make(map[string]Credential, len(users)),
		key:    make([]byte, 32),
		slots:  make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		now:    time.Now,
		proofs: map[string][]proof{},
	}
	_, _ = rand.Read(a.key)
	cost := bcrypt.MinCost
	for _, u := range users {
		a.users[u.Username] = u
		for _, h := range append([]string{u.PasswordHash}, u.APIKeys...) {
			if c, err := bcrypt.Cost([]byte(h)); err == nil {
				cost = max(cost, c)
			}
		}
	}
	// The dummy costs what the users' hashes cost, so that an unknown user
	// takes as long as a wrong password.
	var err error
	if a.dummy, err = bcrypt.GenerateFromPassword([]byte(rand.Text()), cost); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	return a, nil
}

// Lookup returns the user named username.
func (a *Authenticator) Lookup(username string) (Credential, bool) {
	c, ok := a.users[username]
	return c, ok
}

// Password returns the user that username and password log in as, or
// ErrNoCredentials, ErrUnknownUser or ErrWrongPassword.
func (a *Authenticator) Password(username string, password []byte) (Credential, error) {
	if username == "" && len(password) == 0 {
		return Credential{}, ErrNoCredentials
	}
	c, ok := a.users[username]
	switch {
	case !ok:
		a.spend(password)
		return Credential{}, ErrUnknownUser
	case c.Password != "":
		if equalSecrets([]byte(c.Password), password) {
			return c, nil
		}
		return Credential{}, ErrWrongPassword
	case c.PasswordHash == "" || len(password) > maxSecretLen:
		a.spend(password)
		return Credential{}, ErrWrongPassword
	}
	if !a.verify(c.Username, "password", []string{c.PasswordHash}, password) {
		return Credential{}, ErrWrongPassword
	}
	return c, nil
}

// APIKey returns the user whose API key key is (see NewAPIKey), or
// ErrUnknownAPIKey.
func (a *Authenticator) APIKey(key string) (Credential, error) {
	username, secret, ok := ParseAPIKey(key)
	if !ok {
		return Credential{}, ErrUnknownAPIKey
	}
	c, ok := a.users[username]
	if !ok || len(c.APIKeys) == 0 {
		a.spend(secret)
		return Credential{}, ErrUnknownAPIKey
	}
	if !a.verify(username, "api_key", c.APIKeys, secret) {
		return Credential{}, ErrUnknownAPIKey
	}
	return c, nil
}

// verify reports whether secret matches one of hashes: from a remembered
// verification, else by bcrypt, remembering a success.
func (a *Authenticator) verify(username, kind string, hashes []string, secret []byte) bool {
	mac := hmac.New(sha256.New, a.key)
	mac.Write([]byte(kind))
	mac.Write([]byte{0})
	mac.Write(secret)
	var sum [sha256.Size]byte
	mac.Sum(sum[:0])

	now := a.now()
	a.mu.Lock()
	found := false
	for _, p := range a.proofs[username] {
		if now.Before(p.until) && subtle.ConstantTimeCompare(p.sum[:], sum[:]) == 1 {
			found = true
		}
	}
	a.mu.Unlock()
	if found {
		return true
	}
	for _, h := range hashes {
		if a.compare([]byte(h), secret) {
			a.remember(username, proof{sum: sum, until: now.Add(verifiedFor)})
			return true
		}
	}
	return false
}

// remember keeps p for username, in place of an expired or the oldest proof
// when the user has proofsPerUser already.
func (a *Authenticator) remember(username string, p proof) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.proofs[username]
	if len(ps) < proofsPerUser {
		a.proofs[username] = append(ps, p)
		return
	}
	oldest := 0
	for i := range ps {
		if ps[i].until.Before(ps[oldest].until) {
			oldest = i
		}
	}
	ps[oldest] = p
}

// spend makes one bcrypt comparison that fails, so that a refusal for an
// unknown user takes as long as one for a wrong password.
func (a *Authenticator) spend(secret []byte) { a.compare(a.dummy, secret) }

// compare reports whether secret matches the bcrypt hash, once a slot is free.
func (a *Authenticator) compare(hash, secret []byte) bool {
	a.slots <- struct{}{}
	defer func() { <-a.slots }()
	a.bcrypts.Add(1)
	return bcrypt.CompareHashAndPassword(hash, secret) == nil
}

// equalSecrets compares two secrets in constant time, their lengths included.
func equalSecrets(a, b []byte) bool {
	x, y := sha256.Sum256(a), sha256.Sum256(b)
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

// NewAPIKey returns a new random API key for username and the bcrypt hash
// of its secret part at cost (0: DefaultCost), for the user's api_keys. The
// key, "mqi_<username>_<64 hex digits>", names its user so that a login
// checks that user's hashes only; it is shown once and never stored.
func NewAPIKey(username string, cost int) (key, hash string, err error) {
	secret := make([]byte, apiKeySecretLen/2)
	_, _ = rand.Read(secret)
	text := hex.EncodeToString(secret)
	h, err := hashSecret([]byte(text), cost)
	if err != nil {
		return "", "", err
	}
	return APIKeyPrefix + username + "_" + text, h, nil
}

// ParseAPIKey splits an API key made by NewAPIKey into its username and its
// secret part; ok is false for anything else.
func ParseAPIKey(key string) (username string, secret []byte, ok bool) {
	rest, found := strings.CutPrefix(key, APIKeyPrefix)
	i := strings.LastIndexByte(rest, '_')
	if !found || i <= 0 || len(rest)-i-1 != apiKeySecretLen {
		return "", nil, false
	}
	text := rest[i+1:]
	if _, err := hex.DecodeString(text); err != nil || strings.ToLower(text) != text {
		return "", nil, false
	}
	return rest[:i], []byte(text), true
}

// hashSecret returns the bcrypt hash of secret at cost (0: DefaultCost).
func hashSecret(secret []byte, cost int) (string, error) {
	if len(secret) > maxSecretLen {
		return "", fmt.Errorf("a password is at most %d bytes (bcrypt ignores the rest); this one is %d", maxSecretLen, len(secret))
	}
	if cost == 0 {
		cost = DefaultCost
	}
	if cost < bcrypt.MinCost || cost > bcrypt.MaxCost {
		return "", fmt.Errorf("bcrypt cost %d: want %d to %d (default %d)", cost, bcrypt.MinCost, bcrypt.MaxCost, DefaultCost)
	}
	h, err := bcrypt.GenerateFromPassword(secret, cost)
	if err != nil {
		return "", fmt.Errorf("hash the password: %w", err)
	}
	return string(h), nil
}
