package detect

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"

	"github.com/mqttinfer/mqttinfer/inference"
)

// Params are the per-request options (request "params").
type Params struct {
	// ScoreThreshold is the lowest class score reported, in [0.05, 1].
	ScoreThreshold float64 `json:"score_threshold"`
	// MaxDetections is the most detections returned, 1 to 300.
	MaxDetections int `json:"max_detections"`
	// IoUThreshold: a box overlapping a better one of the same class by
	// more than this intersection over union is dropped; in (0, 1].
	IoUThreshold float64 `json:"iou_threshold"`
}

// DefaultParams are the params of a request that gives none.
var DefaultParams = Params{ScoreThreshold: 0.35, MaxDetections: 100, IoUThreshold: 0.6}

// Limits of Params.
const (
	MinScoreThreshold = 0.05
	MaxMaxDetections  = 300
)

// decodeInput returns the image bytes of {"image": "<base64>"}.
func decodeInput(raw json.RawMessage) ([]byte, error) {
	fields, err := object(raw, "input", `{"image": "<base64 JPEG or PNG>"}`)
	if err != nil {
		return nil, err
	}
	for k := range fields {
		if k != "image" {
			return nil, inference.InvalidInput("input: unknown field %q (the only field is image, a base64 JPEG or PNG)", clip(k))
		}
	}
	v, ok := fields["image"]
	if !ok {
		return nil, inference.InvalidInput("input.image is required: a base64 JPEG or PNG image")
	}
	if k := kind(v); k != "string" {
		return nil, inference.InvalidInput("input.image must be a base64 string, got %s", a(k))
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, inference.InvalidInput("input.image is not a valid JSON string: %v", err)
	}
	return decodeBase64(s)
}

// decodeParams returns DefaultParams overridden by the fields of raw.
func decodeParams(raw json.RawMessage) (Params, error) {
	p := DefaultParams
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || string(raw) == "null" {
		return p, nil
	}
	fields, err := object(raw, "params", `{"score_threshold": 0.35, "max_detections": 100, "iou_threshold": 0.6}`)
	if err != nil {
		return p, err
	}
	for k, v := range fields {
		if kind(v) != "number" {
			return p, inference.InvalidInput("params.%s must be a number, got %s", clip(k), a(kind(v)))
		}
		x, err := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			return p, inference.InvalidInput("params.%s must be a finite number, got %s", clip(k), clip(string(v)))
		}
		switch k {
		case "score_threshold":
			if x < MinScoreThreshold || x > 1 {
				return p, inference.InvalidInput("params.score_threshold must be in [%g, 1], got %g", MinScoreThreshold, x)
			}
			p.ScoreThreshold = x
		case "max_detections":
			if x != math.Trunc(x) || x < 1 || x > MaxMaxDetections {
				return p, inference.InvalidInput("params.max_detections must be a whole number from 1 to %d, got %g", MaxMaxDetections, x)
			}
			p.MaxDetections = int(x)
		case "iou_threshold":
			if x <= 0 || x > 1 {
				return p, inference.InvalidInput("params.iou_threshold must be in (0, 1], got %g", x)
			}
			p.IoUThreshold = x
		default:
			return p, inference.InvalidInput("params: unknown field %q (the fields are score_threshold, max_detections and iou_threshold)", clip(k))
		}
	}
	return p, nil
}

// object decodes raw as a JSON object; name and example are for messages.
func object(raw json.RawMessage, name, example string) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, inference.InvalidInput("%s is required: a JSON object like %s", name, example)
	}
	if k := kind(raw); k != "object" {
		return nil, inference.InvalidInput("%s must be a JSON object like %s, got %s", name, example, a(k))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, inference.InvalidInput("%s is not valid JSON: %v", name, err)
	}
	return m, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// kind and a name a JSON value's type in messages (see inference.JSONKind).
var (
	kind = inference.JSONKind
	a    = inference.WithArticle
)
