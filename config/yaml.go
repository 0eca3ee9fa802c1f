package config

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Mask replaces secrets in YAML output.
const Mask = "***"

// YAML renders c as a config file with the same keys Load reads, every option
// included (for `mqttinfer serve --print-config`). remote.password is shown
// as "***" when it is set. Durations are written with units ("1h0m0s").
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
