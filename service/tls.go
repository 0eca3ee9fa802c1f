package service

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/config"
)

// certReloadInterval is how often the certificate files are checked for a
// change.
const certReloadInterval = 2 * time.Second

// certs holds the node's server certificate and the CAs of client
// certificates, and reads them again when their files change (a renewed
// certificate, a rotated CA): new connections get the new ones, existing
// ones keep theirs.
type certs struct {
	cfg config.TLS
	log *slog.Logger

	mu    sync.RWMutex
	cert  *tls.Certificate
	pool  *x509.CertPool // nil without tls.client_ca_file
	stamp string         // the files' sizes and modification times
}

// newCerts reads the certificate, its key and the client CAs of cfg.
func newCerts(cfg config.TLS, log *slog.Logger) (*certs, error) {
	c := &certs{cfg: cfg, log: log}
	if _, err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// reload reads the files again when they changed, and reports whether it
// did. A change that does not load (a key that does not match, a half
// written file) keeps the previous certificates.
func (c *certs) reload() (bool, error) {
	stamp := c.stampNow()
	c.mu.RLock()
	same := stamp == c.stamp
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	cert, err := tls.LoadX509KeyPair(c.cfg.CertFile, c.cfg.KeyFile)
	if err != nil {
		return false, fmt.Errorf("tls.cert_file %s with tls.key_file %s: %w", c.cfg.CertFile, c.cfg.KeyFile, err)
	}
	var pool *x509.CertPool
	if c.cfg.ClientCAFile != "" {
		pem, err := os.ReadFile(c.cfg.ClientCAFile)
		if err != nil {
			return false, fmt.Errorf("tls.client_ca_file: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return false, fmt.Errorf("tls.client_ca_file %s: no PEM certificate in it", c.cfg.ClientCAFile)
		}
	}
	c.mu.Lock()
	c.cert, c.pool, c.stamp = &cert, pool, stamp
	c.mu.Unlock()
	return true, nil
}

func (c *certs) stampNow() string {
	var b strings.Builder
	for _, f := range []string{c.cfg.CertFile, c.cfg.KeyFile, c.cfg.ClientCAFile} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s:?;", f)
		}
	}
	return b.String()
}

// run checks the files every certReloadInterval until ctx is done.
func (c *certs) run(ctx context.Context) {
	t := time.NewTicker(certReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			switch ok, err := c.reload(); {
			case err != nil:
				c.log.Error("certificates not reloaded: keeping the previous ones", "error", err)
			case ok:
				c.log.Info("certificates reloaded", "cert", c.cfg.CertFile, "client_ca", c.cfg.ClientCAFile)
			}
		}
	}
}

// serverConfig is the TLS configuration of a listener: the current
// certificate, and with clientCerts the current client CAs, whose
// certificate every client must show (mutual TLS).
func (c *certs) serverConfig(clientCerts bool) *tls.Config {
	current := func() *tls.Config {
		c.mu.RLock()
		defer c.mu.RUnlock()
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*c.cert}}
		if clientCerts && c.pool != nil {
			cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, c.pool
		}
		return cfg
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c.mu.RLock()
			defer c.mu.RUnlock()
			if c.cert == nil {
				return nil, errors.New("no certificate")
			}
			return c.cert, nil
		},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return current(), nil },
	}
}
