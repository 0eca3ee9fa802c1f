package gateway

import (
	"mime"
	"strconv"
	"strings"

	"github.com/mqttinfer/mqttinfer/api"
)

const (
	contentTypeJSON = "application/json"
	contentTypeSSE  = "text/event-stream"
)

// isCBOR reports whether a Content-Type header names a CBOR body. Anything
// else, a missing header included, is read as JSON: curl -d sends
// application/x-www-form-urlencoded, and the body decides anyway.
func isCBOR(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == api.ContentTypeCBOR
}

// acceptQ returns the quality an Accept header gives the exact media type
// mt, and whether it lists mt at all. Wildcards are not matched: the gateway
// picks among its own types only when a client names them.
func acceptQ(accept []string, mt string) (q float64, listed bool) {
	for _, line := range accept {
		for _, part := range strings.Split(line, ",") {
			t, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || t != mt {
				continue
			}
			q := 1.0
			if s, ok := params["q"]; ok {
				if v, err := strconv.ParseFloat(s, 64); err == nil && v >= 0 && v <= 1 {
					q = v
				}
			}
			return q, true
		}
	}
	return 0, false
}

// acceptsSSE reports whether the Accept header asks for an event stream.
func acceptsSSE(accept []string) bool {
	q, ok := acceptQ(accept, contentTypeSSE)
	return ok && q > 0
}

// wantsCBOR decides the encoding of a reply on an API version that has CBOR:
// the type the Accept header prefers among JSON and CBOR, else (neither
// listed, or a tie) the type of the request.
func wantsCBOR(accept []string, requestCBOR bool) bool {
	qc, c := acceptQ(accept, api.ContentTypeCBOR)
	qj, j := acceptQ(accept, contentTypeJSON)
	switch {
	case !c && !j, c && j && qc == qj:
		return requestCBOR
	case c && j:
		return qc > qj
	case c:
		return qc > 0
	default: // JSON only
		return requestCBOR && qj == 0
	}
}
