package broker

import (
	"slices"
	"strings"

	"github.com/mqttinfer/mqttinfer/api"
)

// validateStage checks a request's size, decodes its body and checks that
// the model exists. On success in.body holds the request with its id set.
type validateStage struct {
	maxSize int
	models  func() []string   // for the 404's list
	has     func(string) bool // the per-request check
}

func (v *validateStage) check(in *inbound) *api.Error {
	if n := len(in.pk.Payload); n > v.maxSize {
		return api.Errorf(api.PayloadTooLarge, "request is %d bytes, the limit is %d", n, v.maxSize)
	}
	body, e := api.Decode(in.topic.Version, in.pk.Payload, in.contentType())
	in.body = body
	if e != nil {
		return e
	}
	if v.has != nil && !v.has(in.topic.Model) {
		names := v.models()
		e := api.Errorf(api.ModelNotFound, "model %q does not exist; models: %s", in.topic.Model, strings.Join(names, ", "))
		e.Models = names
		return e
	}
	if in.body.ID == "" {
		in.body.ID = api.NewID()
	}
	return nil
}

func newValidateStage(opts Options) *validateStage {
	v := &validateStage{maxSize: opts.MaxRequestSize, models: opts.Models, has: opts.HasModel}
	if v.models == nil {
		v.has = nil // nothing to list: no model check at the broker
	} else if v.has == nil {
		v.has = func(name string) bool { return slices.Contains(v.models(), name) }
	}
	return v
}
