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

// ReplyHead is what a worker needs to know of a reply another worker sent:
// which request it answers and whether it ends it.
type ReplyHead struct {
	ID string `json:"id" cbor:"id"`
	// Status is the reply's status; 0 for a stream's delta event.
	Status int `json:"status" cbor:"status"`
	// Seq is a stream event's sequence number.
	Seq int `json:"seq" cbor:"seq"`
}

// Final reports whether the reply ends its request: a result, or a
// stream's done or error event.
func (h ReplyHead) Final() bool { return h.Status != 0 }

// PeekReply reads the head of a reply (a Result or a StreamEvent) without
// the rest. The body is JSON, or CBOR when contentType is ContentTypeCBOR;
// ok is false when it is neither.
func PeekReply(body []byte, contentType string) (h ReplyHead, ok bool) {
	return h, peek(body, contentType, &h)
}

// RequestHead is what a worker that only holds a copy of a request needs to
// know of it.
type RequestHead struct {
	ID     string `json:"id" cbor:"id"`
	Cancel bool   `json:"cancel" cbor:"cancel"`
}

// PeekRequest reads the id and the cancel flag of a request body, JSON or
// (contentType ContentTypeCBOR) CBOR, without the rest. ok is false when the
// body is neither; an id longer than MaxRequestIDLen reads as "".
func PeekRequest(body []byte, contentType string) (h RequestHead, ok bool) {
	if contentType == ContentTypeCBOR {
		// The way Decode reads CBOR, so that both name a request alike:
		// through a generic value and its JSON (byte strings as base64,
		// the last of two keys that differ in case, tags dropped).
		js, err := cborAsJSON(body)
		if err != nil {
			return h, false
		}
		body = js
	}
	ok = json.Unmarshal(body, &h) == nil
	if len(h.ID) > MaxRequestIDLen {
		h.ID = ""
	}
	return h, ok
}

func peek(body []byte, contentType string, v any) bool {
	if contentType == ContentTypeCBOR {
		return cborDec.Unmarshal(body, v) == nil
	}
	return json.Unmarshal(body, v) == nil
}
