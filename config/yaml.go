package config

import (
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
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("render config as YAML: %w", err)
	}
	return b, nil
}
