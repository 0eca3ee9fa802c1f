package main

import (
	"slices"
	"strings"
	"testing"
)

func TestStackEnv(t *testing.T) {
	for _, c := range []struct {
		args, env []string
		want      string // the GODEBUG entry after, "" when serve or worker need not run again
	}{
		{[]string{"mqttinfer", "serve"}, []string{"HOME=/root"}, "GODEBUG=gcshrinkstackoff=1"},
		{[]string{"mqttinfer", "worker", "--broker", "x"}, []string{"GODEBUG=gctrace=1", "A=b"}, "GODEBUG=gctrace=1,gcshrinkstackoff=1"},
		{[]string{"mqttinfer", "serve"}, []string{"GODEBUG=gcshrinkstackoff=0"}, ""}, // the operator's choice stands
		{[]string{"mqttinfer", "sim"}, nil, ""},
		{[]string{"mqttinfer"}, nil, ""},
	} {
		env, ok := stackEnv(c.args, c.env)
		if ok != (c.want != "") {
			t.Errorf("%v %v: runs again %v, want %v", c.args, c.env, ok, c.want != "")
			continue
		}
		if !ok {
			continue
		}
		godebug := slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return !strings.HasPrefix(kv, "GODEBUG=") })
		others := slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
		wantOthers := slices.DeleteFunc(slices.Clone(c.env), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
		if !slices.Equal(godebug, []string{c.want}) || !slices.Equal(others, wantOthers) {
			t.Errorf("%v %v: env %v, want %v and %s", c.args, c.env, env, wantOthers, c.want)
		}
	}
}
