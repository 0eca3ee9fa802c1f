package api

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"hash/fnv"
	"strconv"
	"sync/atomic"
)

var (
	idPrefix  = newIDPrefix()
	idCounter atomic.Uint64
)

func newIDPrefix() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "g" + base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
}

// NewID returns a request id for a request that came without one: unique in
// this process, and across processes with overwhelming probability.
func NewID() string {
	return idPrefix + "-" + strconv.FormatUint(idCounter.Add(1), 36)
}

// Marshal encodes a reply (Result or StreamEvent) for the given API version.
// v1 and v2 share the JSON encoding today; v1 must stay byte-compatible.
func Marshal(version string, v any) ([]byte, error) {
	return json.Marshal(v)
}

// ContentID is the id given to a request that came without one, derived
// from what every subscriber of the request sees alike: its topic and its
// body. The workers of a group, each holding a copy, name it the same, so
// a worker can tell that a request another worker answered is the one it
// holds. Two identical requests of a device share their id.
func ContentID(topic string, body []byte) string {
	h := fnv.New64a()
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write(body)
	return "c-" + strconv.FormatUint(h.Sum64(), 16)
}

// PeekReply reads the id and the status of a reply (a Result or a
// StreamEvent) without the rest: status 0 is a stream's delta event, any
// other status a final reply. The body is JSON, or CBOR when contentType is
// ContentTypeCBOR. ok is false when the body is neither.
func PeekReply(body []byte, contentType string) (id string, status int, ok bool) {
	var r struct {
		ID     string `json:"id" cbor:"id"`
		Status int    `json:"status" cbor:"status"`
	}
	var err error
	if contentType == ContentTypeCBOR {
		err = cborDec.Unmarshal(body, &r)
	} else {
		err = json.Unmarshal(body, &r)
	}
	if err != nil {
		return "", 0, false
	}
	return r.ID, r.Status, true
}
