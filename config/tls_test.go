package config

import (
	"crypto/tls"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/internal/testenv"
)

func TestTLSConfigNoneSet(t *testing.T) {
	c, err := Default().Remote.TLSConfig()
	if c != nil || err != nil {
		t.Fatalf("TLSConfig() with no remote.tls_* = %v, %v; want nil, nil (the libraries' defaults)", c, err)
	}
}

// TestTLSConfigHandshake connects with the built configuration to a server
// whose certificate a test CA signed and that asks for a client certificate
// from the same CA.
func TestTLSConfigHandshake(t *testing.T) {
	ca, dir := testenv.NewCA(t), t.TempDir()
	caFile, otherCAFile := ca.CertFile(t, dir), testenv.NewCA(t).CertFile(t, t.TempDir())
	serverCert, serverKey := ca.ServerFiles(t, dir, "127.0.0.1", "broker.test")
	server, err := tls.LoadX509KeyPair(serverCert, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := ca.ClientFiles(t, dir, "worker-1")

	tests := []struct {
		name    string
		remote  Remote
		wantErr string // "" = the handshake succeeds
	}{
		{"CA and client certificate", Remote{TLSCAFile: caFile, TLSCertFile: cert, TLSKeyFile: key}, ""},
		{"server name", Remote{TLSCAFile: caFile, TLSCertFile: cert, TLSKeyFile: key, TLSServerName: "broker.test"}, ""},
		{"wrong server name", Remote{TLSCAFile: caFile, TLSCertFile: cert, TLSKeyFile: key, TLSServerName: "other.test"}, "other.test"},
		{"another CA", Remote{TLSCAFile: otherCAFile, TLSCertFile: cert, TLSKeyFile: key}, "unknown authority"},
		{"no client certificate", Remote{TLSCAFile: caFile}, "certificate required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.remote.TLSConfig()
			if err != nil {
				t.Fatalf("TLSConfig: %v", err)
			}
			err = handshake(t, cfg, &tls.Config{
				Certificates: []tls.Certificate{server},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    ca.Pool(),
			})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("handshake: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// handshake dials a TLS server on 127.0.0.1 with client and returns the
// client's error, or the server's when the client saw none. A TLS 1.3
// client learns that the server refused its certificate only when it reads.
func handshake(t *testing.T, client, server *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		if err := c.(*tls.Conn).Handshake(); err != nil {
			srvErr <- err
			return
		}
		_, err = c.Write([]byte("ok"))
		srvErr <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err == nil {
		_, err = conn.Read(make([]byte, 2))
		conn.Close()
	}
	if e := <-srvErr; err == nil {
		err = e
	}
	return err
}

func TestTLSConfigErrors(t *testing.T) {
	ca, dir := testenv.NewCA(t), t.TempDir()
	aCert, aKey := ca.ClientFiles(t, dir, "a")
	_, bKey := ca.ClientFiles(t, dir, "b")
	notPEM := writeFile(t, "ca.pem", "not a certificate\n")
	missing := t.TempDir() + "/none.pem"
	tests := []struct {
		name   string
		remote Remote
		wants  []string
		is     error
	}{
		{name: "missing CA file", remote: Remote{TLSCAFile: missing}, wants: []string{`remote.tls_ca_file = "` + missing + `"`}, is: fs.ErrNotExist},
		{name: "CA file without a certificate", remote: Remote{TLSCAFile: notPEM}, wants: []string{`remote.tls_ca_file = "` + notPEM + `": no PEM certificate in it`}},
		{name: "certificate without key", remote: Remote{TLSCertFile: aCert}, wants: []string{"remote.tls_cert_file", "needs remote.tls_key_file"}},
		{name: "key without certificate", remote: Remote{TLSKeyFile: aKey}, wants: []string{"remote.tls_key_file", "needs remote.tls_cert_file"}},
		{name: "key of another certificate", remote: Remote{TLSCertFile: aCert, TLSKeyFile: bKey},
			wants: []string{`remote.tls_cert_file = "` + aCert + `", remote.tls_key_file = "` + bKey + `"`, "private key does not match public key"}},
		{name: "a key as the CA", remote: Remote{TLSCAFile: aKey}, wants: []string{"remote.tls_ca_file", "no PEM certificate"}},
		{name: "every problem", remote: Remote{TLSCAFile: missing, TLSKeyFile: aKey}, wants: []string{"remote.tls_ca_file", "remote.tls_key_file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.remote.TLSConfig()
			if err == nil || c != nil {
				t.Fatalf("TLSConfig = %v, %v; want an error", c, err)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

func TestValidateTLS(t *testing.T) {
	ca, dir := testenv.NewCA(t), t.TempDir()
	caFile := ca.CertFile(t, dir)
	aCert, aKey := ca.ClientFiles(t, dir, "a")
	tests := []struct {
		name   string
		change func(r *Remote)
		wants  []string
	}{
		{name: "ssl with every file", change: func(r *Remote) {
			r.Broker, r.TLSCAFile, r.TLSCertFile, r.TLSKeyFile = "ssl://b.test:8883", caFile, aCert, aKey
		}},
		{name: "wss with a CA", change: func(r *Remote) { r.Broker, r.TLSCAFile = "wss://b.test/mqtt", caFile }},
		{name: "TLS options on tcp", change: func(r *Remote) { r.TLSCAFile = caFile },
			wants: []string{`remote.broker = "tcp://127.0.0.1:1883": the remote.tls_* options are set but tcp:// does not use TLS`}},
		{name: "a server name on unix", change: func(r *Remote) { r.Broker, r.TLSServerName = "unix:///run/mqtt.sock", "b.test" },
			wants: []string{"unix:// does not use TLS"}},
		{name: "bad files reported by Validate", change: func(r *Remote) { r.Broker, r.TLSCertFile = "mqtts://b.test:8883", aCert },
			wants: []string{"remote.tls_cert_file", "needs remote.tls_key_file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c.Remote)
			err := c.Validate(builtin)
			if len(tt.wants) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate = nil, want an error")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
