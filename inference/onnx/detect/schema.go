package detect

import (
	"encoding/json"
	"fmt"
)

// inputSchema is the JSON Schema of the input, published in the catalog.
func inputSchema(maxPixels int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "detect input",
  "description": "One camera image. It is letterboxed into 416x416 (aspect ratio kept, black margins); boxes come back in the image's own pixels.",
  "$comment": "Optional request params: {\"score_threshold\": 0.35, \"max_detections\": 100, \"iou_threshold\": 0.6} (the defaults shown): the lowest class score reported, in [0.05, 1]; the most detections, 1 to 300; the overlap (intersection over union) above which a box of the same class as a better one is dropped, in (0, 1].",
  "type": "object",
  "properties": {
    "image": {
      "type": "string",
      "contentEncoding": "base64",
      "description": "A JPEG or PNG image, standard base64 (padding optional; a data:image/...;base64, prefix is accepted), at most %d pixels (width x height)."
    }
  },
  "required": ["image"],
  "additionalProperties": false
}`, maxPixels))
}

// outputSchema is the JSON Schema of the output, published in the catalog.
var outputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "detect output",
  "type": "object",
  "properties": {
    "detections": {
      "type": "array",
      "description": "Objects found, best score first; per class, boxes overlapping a better one are dropped.",
      "items": {
        "type": "object",
        "properties": {
          "label": {"type": "string", "description": "COCO class name, e.g. person, car, dog."},
          "class_id": {"type": "integer", "minimum": 0, "maximum": 79, "description": "COCO class index (0 person ... 79 toothbrush)."},
          "score": {"type": "number", "minimum": 0, "maximum": 1},
          "box": {
            "type": "object",
            "description": "In image pixels: x1,y1 top left, x2,y2 bottom right.",
            "properties": {
              "x1": {"type": "number", "minimum": 0},
              "y1": {"type": "number", "minimum": 0},
              "x2": {"type": "number", "minimum": 0},
              "y2": {"type": "number", "minimum": 0}
            },
            "required": ["x1", "y1", "x2", "y2"]
          }
        },
        "required": ["label", "class_id", "score", "box"]
      }
    },
    "width": {"type": "integer", "minimum": 1, "description": "Image width in pixels."},
    "height": {"type": "integer", "minimum": 1, "description": "Image height in pixels."}
  },
  "required": ["detections", "width", "height"]
}`)
