package gateway

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/topics"
)

// catalog answers GET /{ver}/models with the catalog that the service
// retains on the models topic; an empty catalog has "models": [].
func (g *gateway) catalog(w http.ResponseWriter, r *http.Request) {
	if !g.versionOK(w, r, "") {
		return
	}
	c := g.models.Catalog()
	if c.Models == nil {
		c.Models = []inference.Info{}
	}
	writeJSON(w, http.StatusOK, c)
}

// model answers GET /{ver}/models/{model} with the model's Info.
func (g *gateway) model(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	if !g.versionOK(w, r, name) {
		return
	}
	m, ok := g.models.Get(name)
	if !ok {
		writeJSON(w, http.StatusNotFound, api.ErrorResult("", name, g.modelNotFound(name)))
		return
	}
	writeJSON(w, http.StatusOK, m.Info())
}

// versionOK answers 404 unsupported_version, and reports false, when the
// path's version is not supported.
func (g *gateway) versionOK(w http.ResponseWriter, r *http.Request, model string) bool {
	ver := r.PathValue("ver")
	if topics.Supported(ver) {
		return true
	}
	e := api.Errorf(api.UnsupportedVersion, "API version %q is not supported; versions: %s", ver, strings.Join(topics.Versions(), ", "))
	e.Versions = topics.Versions()
	writeJSON(w, http.StatusNotFound, api.ErrorResult("", model, e))
	return false
}

func (g *gateway) serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", contentTypeJSON)
	_, _ = w.Write(g.openapi)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "cannot encode the reply", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
