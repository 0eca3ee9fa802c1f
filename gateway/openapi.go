package gateway

import (
	_ "embed"
	"encoding/json"

	"github.com/mqttinfer/mqttinfer/topics"
)

// openAPISource is the OpenAPI 3.0 description of the gateway, served on
// GET /openapi.json. Its tests load it with kin-openapi, validate it, check
// that every route is documented and that real answers match its schemas.
//
//go:embed openapi.json
var openAPISource []byte

// openAPIDocument returns the served document: the embedded one with the
// version parameter's enum set to topics.Versions(), so that a new version
// is documented as soon as it is routed.
func openAPIDocument() []byte {
	var doc map[string]any
	if err := json.Unmarshal(openAPISource, &doc); err != nil {
		return openAPISource // the tests keep this from happening
	}
	if c, ok := doc["components"].(map[string]any); ok {
		if ps, ok := c["parameters"].(map[string]any); ok {
			if ver, ok := ps["ver"].(map[string]any); ok {
				if s, ok := ver["schema"].(map[string]any); ok {
					s["enum"] = topics.Versions()
				}
			}
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return openAPISource
	}
	return out
}
