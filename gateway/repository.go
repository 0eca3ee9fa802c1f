package gateway

import (
	"net/http"

	"github.com/mqttinfer/mqttinfer/api"
)

// Repository is what the gateway needs of a model repository.
type Repository interface {
	Load(model string) error
	Unload(model string) error
}

// loadModel answers POST /{ver}/repository/{model}/load.
func (g *gateway) loadModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	if !g.versionOK(w, r, name) {
		return
	}
	if g.repo == nil {
		writeJSON(w, http.StatusNotFound, api.ErrorResult("", name, api.Errorf(api.ModelNotFound, "this service has no model repository (models.repository)")))
		return
	}
	if err := g.repo.Load(name); err != nil {
		m, ok := g.models.Get(name)
		if !ok {
			writeJSON(w, http.StatusNotFound, api.ErrorResult("", name, api.Errorf(api.ModelNotFound, "%v", err)))
			return
		}
		res := api.ErrorResult("", name, api.Errorf(api.ModelUnavailable, "%v", err))
		res.ModelVersion = m.Info().Version
		writeJSON(w, http.StatusServiceUnavailable, res)
		return
	}
	m, _ := g.models.Get(name)
	writeJSON(w, http.StatusOK, m.Info())
}

// unloadModel answers POST /{ver}/repository/{model}/unload.
func (g *gateway) unloadModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	if !g.versionOK(w, r, name) {
		return
	}
	m, ok := g.models.Get(name)
	if g.repo == nil || !ok {
		writeJSON(w, http.StatusNotFound, api.ErrorResult("", name, g.modelNotFound(name)))
		return
	}
	info := m.Info()
	if err := g.repo.Unload(name); err != nil {
		writeJSON(w, http.StatusNotFound, api.ErrorResult("", name, api.Errorf(api.ModelNotFound, "%v", err)))
		return
	}
	writeJSON(w, http.StatusOK, info)
}
