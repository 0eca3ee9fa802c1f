package broker

import (
	"crypto/tls"
	"crypto/x509"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// certIdentity returns the identity of a client that connected with a
// verified client certificate (mutual TLS): its subject's common name
// (mode "cn"), or its first DNS name, else its first URI (mode "san"). ok
// is false when the connection is not TLS or showed no verified
// certificate.
func certIdentity(cl *mqtt.Client, mode string) (id string, ok bool) {
	st, ok := tlsState(cl.Net.Conn)
	if !ok || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return "", false
	}
	return identityOf(st.VerifiedChains[0][0], mode), true
}

// identityOf is a certificate's identity for mode ("cn" or "san").
func identityOf(c *x509.Certificate, mode string) string {
	if mode != "san" {
		return c.Subject.CommonName
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	return ""
}

// tlsState finds the TLS connection under c (a WebSocket connection wraps
// one: see NetConn in third_party/mochi-mqtt-server) and returns its state.
func tlsState(c net.Conn) (tls.ConnectionState, bool) {
	for c != nil {
		switch x := c.(type) {
		case *tls.Conn:
			return x.ConnectionState(), true
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return tls.ConnectionState{}, false
		}
	}
	return tls.ConnectionState{}, false
}
