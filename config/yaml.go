package config

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Mask replaces secrets in YAML output. Load refuses it as a value, so that
// printed output fed back in never sets a password to "***".
const Mask = "***"

// YAML renders c as a config file with the same keys Load reads, every option
// included (for `mqttinfer serve --print-config`). remote.password is shown
// as "***" when it is set: the output loads again only where the environment
// or a flag gives the password (see checkMask). Durations are written with
// units ("1h0m0s").
func (c Config) YAML() ([]byte, error) {
	if c.Remote.Password != "" {
		c.Remote.Password = Mask
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("render config as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render config as YAML: %w", err)
	}
	return buf.Bytes(), nil
}

// checkMask refuses a remote.password that is the Mask, which only a
// printed configuration fed back in would hold; from says where the value
// came from. A password set by a source of higher precedence than the file
// (the environment, a flag) has already replaced it.
func checkMask(c Config, from func(key string) string) error {
	if c.Remote.Password != Mask {
		return nil
	}
	const key = "remote.password"
	return fmt.Errorf("config: %s (from %s) is %q, the mask --print-config shows in place of the password: "+
		"set the real password in $%s (or in the file); it is never printed", key, from(key), Mask, envName(key))
}
