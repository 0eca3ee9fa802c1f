package config

import (
	"strings"
	"testing"
)

// FuzzParseAPIKey parses any string as an API key (a Bearer token from
// anyone). It must never panic, and a key it accepts is exactly
// "mqi_<username>_<secret>" with a non-empty username and 64 lower-case
// hex digits.
func FuzzParseAPIKey(f *testing.F) {
	for _, s := range []string{
		"mqi_thermo-1_" + strings.Repeat("0a", 32), "mqi_a_b_" + strings.Repeat("f", 64), "mqi__" + strings.Repeat("0", 64),
		"mqi_d1_" + strings.Repeat("A", 64), "mqi_", "", "Bearer x", "mqi_d1_" + strings.Repeat("0", 63) + "é",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		user, secret, ok := ParseAPIKey(key)
		if !ok {
			return
		}
		if user == "" || len(secret) != apiKeySecretLen || strings.Trim(string(secret), "0123456789abcdef") != "" ||
			APIKeyPrefix+user+"_"+string(secret) != key {
			t.Fatalf("ParseAPIKey(%q) = %q, %q", key, user, secret)
		}
	})
}
