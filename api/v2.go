package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/fxamacker/cbor/v2"
)

// ContentTypeCBOR is the MQTT 5 content type (and HTTP Content-Type) of a
// CBOR body, which v2 accepts.
const ContentTypeCBOR = "application/cbor"

// MaxBatchInputs is the most inputs one v2 request may carry.
const MaxBatchInputs = 256

var cborDec, _ = cbor.DecOptions{
	DefaultMapType:   reflect.TypeFor[map[string]any](),
	MaxNestedLevels:  32,
	MaxArrayElements: 1 << 20,
	MaxMapPairs:      1 << 16,
}.DecMode()

// Decode decodes a request body for an API version. v1 takes JSON and
// rejects the v2 fields; v2 also takes CBOR (contentType ContentTypeCBOR),
// whose byte strings reach the model as base64 strings, and a batch of
// inputs. Failures are *Error of type invalid_request, as DecodeRequest.
func Decode(version string, body []byte, contentType string) (Request, *Error) {
	if contentType == ContentTypeCBOR {
		if version == "v1" {
			return Request{}, Errorf(InvalidRequest, "CBOR bodies need API v2; v1 takes JSON")
		}
		js, err := cborAsJSON(body)
		if err != nil {
			return Request{}, err
		}
		body = js
	}
	r, e := DecodeRequest(body)
	if e != nil {
		return r, e
	}
	switch {
	case version == "v1" && r.Inputs != nil:
		return Request{ID: r.ID}, Errorf(InvalidRequest, "field \"inputs\" is a v2 field: send one \"input\" on v1, or use the v2 topic")
	case r.Inputs != nil && r.Input != nil:
		return Request{ID: r.ID}, Errorf(InvalidRequest, "fields \"input\" and \"inputs\": send one or the other")
	case r.Inputs != nil && len(r.Inputs) == 0:
		return Request{ID: r.ID}, Errorf(InvalidRequest, "field \"inputs\": empty batch")
	case len(r.Inputs) > MaxBatchInputs:
		return Request{ID: r.ID}, Errorf(InvalidRequest, "field \"inputs\": %d inputs, the limit is %d", len(r.Inputs), MaxBatchInputs)
	case r.Inputs != nil && r.Stream:
		return Request{ID: r.ID}, Errorf(InvalidRequest, "field \"stream\": a batch of inputs cannot be streamed")
	}
	return r, nil
}

// cborAsJSON reads a CBOR map request body as the JSON the rest of the
// decoding takes: byte strings become base64 strings.
func cborAsJSON(body []byte) ([]byte, *Error) {
	var v any
	if err := cborDec.Unmarshal(body, &v); err != nil {
		return nil, Errorf(InvalidRequest, "malformed CBOR: %v", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, Errorf(InvalidRequest, "body is not a CBOR map")
	}
	js, err := json.Marshal(v)
	if err != nil {
		return nil, Errorf(InvalidRequest, "CBOR body has no JSON equivalent: %v", err)
	}
	return js, nil
}

// MarshalCBOR encodes a reply as CBOR, with the same keys as its JSON.
func MarshalCBOR(v any) ([]byte, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var generic any
	if err := dec.Decode(&generic); err != nil {
		return nil, err
	}
	out, err := cbor.Marshal(numbers(generic))
	if err != nil {
		return nil, fmt.Errorf("encode CBOR: %w", err)
	}
	return out, nil
}

// numbers turns the json.Numbers of a decoded JSON value into CBOR's
// integers where they are whole, floats otherwise.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}
