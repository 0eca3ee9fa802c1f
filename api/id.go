package api

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
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
