package gateway

import (
	"net/http"
	"net/netip"
	"strings"
)

// ClientID returns who an HTTP request comes from without auth, as the
// device id that the throttle and the models see: "ip-" and the client's IP
// address with '.' and ':' replaced by '-' and '_' (127.0.0.1 is
// "ip-127-0-0-1", ::1 is "ip-__1"); behind a trusted proxy, the last
// address of X-Forwarded-For. It is a valid device id (topics.ValidID).
//
// No header a client chooses (an API key, X-API-Key) names its bucket: a
// client that made up a new one per request would get a new bucket per
// request. With auth on, a client is the user it logged in as instead.
func ClientID(r *http.Request, trustProxy bool) string {
	addr, ok := clientAddr(r, trustProxy)
	if !ok {
		return "ip-unknown"
	}
	return "ip-" + strings.NewReplacer(".", "-", ":", "_").Replace(addr.String())
}

// clientOf is the device id of a request: the user it logged in as with
// auth on, else ClientID.
func (g *gateway) clientOf(r *http.Request) string {
	if c, ok := userOf(r); ok {
		return c.Username
	}
	return ClientID(r, g.trustProxy)
}

// clientAddr returns the client's IP address: the connection's peer, or the
// last valid address of X-Forwarded-For when the proxy is trusted. With one
// trusted proxy the last entry is the address that proxy saw; the entries
// before it are whatever the client claimed.
func clientAddr(r *http.Request, trustProxy bool) (netip.Addr, bool) {
	if trustProxy {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			parts := strings.Split(strings.Join(xff, ","), ",")
			for i := len(parts) - 1; i >= 0; i-- {
				if a, ok := parseAddr(strings.TrimSpace(parts[i])); ok {
					return a, true
				}
			}
		}
	}
	return parseAddr(r.RemoteAddr)
}

// parseAddr parses "ip" or "ip:port" ("[v6]:port"), without zone, with
// IPv4-mapped IPv6 addresses as IPv4.
func parseAddr(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}
