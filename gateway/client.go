package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/netip"
	"strings"
)

// ClientID returns who an HTTP request comes from, as the device id that the
// throttle and the models see:
//
//   - with an API key (Authorization: Bearer <key>, else X-API-Key: <key>),
//     "key-" and the first 12 hex digits of the key's SHA-256, so that the
//     key itself never reaches a log, a metric or a model;
//   - else "ip-" and the client's IP address with '.' and ':' replaced by
//     '-' and '_' (127.0.0.1 is "ip-127-0-0-1", ::1 is "ip-__1"); behind a
//     trusted proxy, the last address of X-Forwarded-For.
//
// Both are valid device ids (topics.ValidID). The gateway does not verify
// keys: a key names a bucket, it does not authenticate. A client that makes
// up a new key per request also gets a new bucket per request, so a public
// gateway belongs behind something that checks keys.
func ClientID(r *http.Request, trustProxy bool) string {
	if key := apiKey(r); key != "" {
		sum := sha256.Sum256([]byte(key))
		return "key-" + hex.EncodeToString(sum[:6])
	}
	addr, ok := clientAddr(r, trustProxy)
	if !ok {
		return "ip-unknown"
	}
	return "ip-" + strings.NewReplacer(".", "-", ":", "_").Replace(addr.String())
}

// apiKey returns the request's API key, or "".
func apiKey(r *http.Request) string {
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, key, ok := strings.Cut(strings.TrimSpace(auth), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if key = strings.TrimSpace(key); key != "" {
				return key
			}
		}
	}
	return strings.TrimSpace(r.Header.Get("X-API-Key"))
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
