// Package testenv starts what the tests of several packages need and no
// test should build alone: a private Mosquitto broker (Debian's, the
// stand-in for any broker that is not ours) on free loopback ports, with
// TLS and a Unix socket when asked, and certificates made on the spot.
// It is for tests only.
package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// MosquittoBin is Debian's Mosquitto broker.
const MosquittoBin = "/usr/sbin/mosquitto"

// startWait bounds how long a broker may take to listen.
const startWait = 10 * time.Second

// Require skips the test when a Debian-packaged file is missing, or fails
// it when MQTTINFER_REQUIRE_TESTDATA is set (make test sets it and installs
// the packages).
func Require(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	msg := fmt.Sprintf("%s is missing: apt-get install -y %s (make test does it)", path, pkg)
	if os.Getenv("MQTTINFER_REQUIRE_TESTDATA") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// programs that cannot be told to pick one themselves. It never returns a
// port it returned before in this process: the system may hand a port out
// again as soon as it is closed, and a test that picks several ports
// before its programs bind them would get one twice (a worker's HTTP
// listener on a NATS server's port).
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[p] {
			portsGiven[p] = true
			return p
		}
	}
	t.Fatal("no TCP port free on 127.0.0.1 that was not handed out already")
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// MosquittoOptions choose the listeners of a test Mosquitto besides its
// plain TCP one.
type MosquittoOptions struct {
	// TLS adds a TLS listener with a server certificate for 127.0.0.1 from
	// CA; with ClientCerts, clients must show a certificate from CA.
	TLS         *CA
	ClientCerts bool
	// Unix adds a listener on a Unix socket.
	Unix bool
	// Config is appended to the generated mosquitto.conf.
	Config string
}

// Mosquitto is a running test broker.
type Mosquitto struct {
	// Addr is the plain TCP listener, host:port.
	Addr string
	// TLSAddr is the TLS listener, host:port ("" without one).
	TLSAddr string
	// Socket is the Unix socket's path ("" without one).
	Socket string

	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

// URL is the plain TCP listener as a broker URL.
func (m *Mosquitto) URL() string { return "tcp://" + m.Addr }

// StartMosquitto starts a private Mosquitto on free loopback ports; it is
// killed at the end of the test. Its log is printed when the test fails.
func StartMosquitto(t testing.TB, o MosquittoOptions) *Mosquitto {
	t.Helper()
	Require(t, MosquittoBin, "mosquitto")
	dir := t.TempDir()
	m := &Mosquitto{Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), out: &syncBuffer{}, exited: make(chan struct{})}
	var conf strings.Builder
	// per_listener_settings false: allow_anonymous applies to every listener.
	fmt.Fprintf(&conf, "user %s\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n", currentUser())
	fmt.Fprintf(&conf, "listener %s 127.0.0.1\nset_tcp_nodelay true\n", port(m.Addr))
	waitFor := []string{m.Addr}
	if o.TLS != nil {
		m.TLSAddr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		cert, key := o.TLS.ServerFiles(t, dir, "127.0.0.1", "localhost")
		fmt.Fprintf(&conf, "listener %s 127.0.0.1\nset_tcp_nodelay true\ncafile %s\ncertfile %s\nkeyfile %s\n",
			port(m.TLSAddr), o.TLS.CertFile(t, dir), cert, key)
		if o.ClientCerts {
			conf.WriteString("require_certificate true\n")
		}
		waitFor = append(waitFor, m.TLSAddr)
	}
	if o.Unix {
		// Socket paths are limited to ~100 bytes: t.TempDir can be longer.
		sdir, err := os.MkdirTemp("", "mq")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sdir) })
		m.Socket = filepath.Join(sdir, "mosquitto.sock")
		fmt.Fprintf(&conf, "listener 0 %s\n", m.Socket)
	}
	conf.WriteString(o.Config)
	file := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(file, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(MosquittoBin, "-c", file)
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	go func() { _ = m.cmd.Wait(); close(m.exited) }()
	t.Cleanup(func() {
		m.Kill()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.out.String())
		}
	})
	deadline := time.Now().Add(startWait)
	for _, addr := range waitFor {
		for {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-m.exited:
				t.Fatalf("mosquitto exited at start-up:\n%s\n%s", m.out.String(), conf.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("mosquitto did not listen on %s: %v\n%s", addr, err, m.out.String())
			}
			time.Sleep(10 * time.Millisecond) // polling a port: there is nothing to wait on
		}
	}
	if m.Socket != "" {
		for {
			if _, err := os.Stat(m.Socket); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("mosquitto did not create %s\n%s", m.Socket, m.out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return m
}

// Kill stops the broker at once (SIGKILL) and waits for it.
func (m *Mosquitto) Kill() {
	_ = m.cmd.Process.Kill()
	<-m.exited
}

// Log is what the broker has logged so far.
func (m *Mosquitto) Log() string { return m.out.String() }

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// syncBuffer is a bytes.Buffer safe for a process's writes and a test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// currentUser is the user Mosquitto runs as. Started as root it would
// switch to the mosquitto user, which cannot read the test's files.
func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}
