package config

import (
	"strings"
	"testing"
)

// TestPrintedConfigLoadsWithoutChangingThePassword: --print-config masks
// remote.password; fed back in, the mask is refused with where to put the
// password, unless the environment or a flag gives it.
func TestPrintedConfigLoadsWithoutChangingThePassword(t *testing.T) {
	c := Default()
	c.Remote.Username, c.Remote.Password = "w1", "hunter2"
	b, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	printed := writeFile(t, "printed.yaml", string(b))

	isolate(t)
	_, err = Load(flags(t, "--config", printed))
	for _, w := range []string{"remote.password (from file " + printed + ")", `"***"`, "MQTTINFER_REMOTE_PASSWORD"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Load(printed): %v, want %q", err, w)
		}
	}

	t.Setenv("MQTTINFER_REMOTE_PASSWORD", "hunter2")
	got, err := Load(flags(t, "--config", printed))
	if err != nil || got.Remote.Password != "hunter2" {
		t.Errorf("with the environment: %q, %v", got.Remote.Password, err)
	}
	got, err = Load(flagsOf(t, ClientCmd, "--config", printed, "--password", "from-flag"))
	if err != nil || got.Remote.Password != "from-flag" {
		t.Errorf("with a flag: %q, %v", got.Remote.Password, err)
	}
	t.Setenv("MQTTINFER_REMOTE_PASSWORD", Mask)
	if _, err := Load(nil); err == nil || !strings.Contains(err.Error(), "from MQTTINFER_REMOTE_PASSWORD") {
		t.Errorf("the mask in the environment: %v", err)
	}
}
