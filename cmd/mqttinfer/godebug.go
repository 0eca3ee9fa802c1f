package main

import (
	"os"
	"slices"
	"strings"
	"syscall"
)

// stackGODEBUG keeps the goroutine stacks of a node from shrinking. A
// node runs two goroutines per connected device; a request grows its
// reader's stack to 8-16 KB, every collection shrinks the idle ones, and
// the next request grows them again, copying the stack each time. With
// 10,000 devices sending one request every 5 s (2,000 requests/s) that
// churn was 12% of the node's CPU, and the collections it caused took p99
// from 8 ms to 137 ms; without shrinking the node spent 23% less CPU and
// peaked 23% lower in memory (scripts/bench.sh; numbers in the README).
// An idle device's reader is moved to a small stack instead
// (broker.Options.ReadIdleRestart).
// The setting is a runtime GODEBUG that //go:debug cannot set, so serve
// and worker run themselves again with it (same pid, same arguments)
// unless GODEBUG already says gcshrinkstackoff.
const stackGODEBUG = "gcshrinkstackoff=1"

// reexecWithStackGODEBUG replaces the process with itself under
// stackGODEBUG, for the commands that hold device connections; it returns
// only when there is nothing to do or exec failed (the node then runs
// without the setting).
func reexecWithStackGODEBUG(args []string) {
	env, ok := stackEnv(args, os.Environ())
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, args, env)
}

// stackEnv is environ with stackGODEBUG added to GODEBUG, and whether the
// command in args needs it (serve and worker, unless GODEBUG names
// gcshrinkstackoff already).
func stackEnv(args, environ []string) ([]string, bool) {
	if len(args) < 2 || !slices.Contains([]string{"serve", "worker"}, args[1]) {
		return nil, false
	}
	godebug := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
		}
	}
	if strings.Contains(godebug, "gcshrinkstackoff") {
		return nil, false
	}
	if godebug != "" {
		godebug += ","
	}
	env := slices.DeleteFunc(slices.Clone(environ), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
	return append(env, "GODEBUG="+godebug+stackGODEBUG), true
}
