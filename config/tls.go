package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
)

// tlsSchemes are the broker URL schemes that paho.mqtt.golang dials with TLS.
var tlsSchemes = []string{"ssl", "tls", "mqtts", "mqtt+ssl", "tcps", "wss"}

// TLSConfig builds the TLS configuration of a connection to r.Broker from
// the remote.tls_* options, for `mqttinfer worker` and the client commands:
//
//   - TLSCAFile: the only certificate authorities trusted to sign the
//     broker's certificate (else the system's roots);
//   - TLSCertFile and TLSKeyFile: the client certificate, for brokers that
//     ask for one (mutual TLS); one without the other is an error;
//   - TLSServerName: the name the broker's certificate must carry (else the
//     host of the broker URL).
//
// It returns nil and no error when none of them is set: the MQTT libraries
// then dial ssl://, tls://, mqtts:// and wss:// with the system's roots.
// The files are read at each call. Every error names the key and the file
// (a missing file, a file without a PEM certificate, a key that does not
// match its certificate), all of them joined. Validate reports the same
// errors.
func (r Remote) TLSConfig() (*tls.Config, error) {
	if !r.tlsSet() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.TLSServerName}
	var errs []error
	if r.TLSCAFile != "" {
		pool, err := loadCAs(r.TLSCAFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("remote.tls_ca_file = %q: %w", r.TLSCAFile, err))
		}
		c.RootCAs = pool
	}
	switch {
	case r.TLSCertFile != "" && r.TLSKeyFile == "":
		errs = append(errs, fmt.Errorf("remote.tls_cert_file = %q: needs remote.tls_key_file (--key-file), the certificate's private key", r.TLSCertFile))
	case r.TLSCertFile == "" && r.TLSKeyFile != "":
		errs = append(errs, fmt.Errorf("remote.tls_key_file = %q: needs remote.tls_cert_file (--cert-file), the certificate of the key", r.TLSKeyFile))
	case r.TLSCertFile != "":
		cert, err := tls.LoadX509KeyPair(r.TLSCertFile, r.TLSKeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("remote.tls_cert_file = %q, remote.tls_key_file = %q: %w", r.TLSCertFile, r.TLSKeyFile, err))
		}
		c.Certificates = []tls.Certificate{cert}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// tlsSet reports whether any remote.tls_* option is set.
func (r Remote) tlsSet() bool {
	return r.TLSCAFile != "" || r.TLSCertFile != "" || r.TLSKeyFile != "" || r.TLSServerName != ""
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
	}
	return pool, nil
}

// checkTLS reports the problems of the remote.tls_* options: those of
// TLSConfig, and TLS options given for a broker URL that is not dialed with
// TLS, where they would do nothing.
func (r Remote) checkTLS() []error {
	_, err := r.TLSConfig()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, b := range r.Brokers() {
		if u, perr := url.Parse(b); perr == nil && r.tlsSet() && !slices.Contains(tlsSchemes, u.Scheme) {
			errs = append(errs, fmt.Errorf("remote.broker = %q: the remote.tls_* options are set but %s:// does not use TLS: use ssl://, mqtts:// or wss://, or drop them", b, u.Scheme))
		}
	}
	return errs
}
