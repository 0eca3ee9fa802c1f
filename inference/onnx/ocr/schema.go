package ocr

import "encoding/json"

// inputSchema is the JSON Schema of the input, published in the catalog.
var inputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "ocr input",
  "description": "One JPEG or PNG image, base64 encoded (standard or URL-safe alphabet, padded or not, optionally as a data URL). At most 4,000,000 pixels by default, checked from the image header. Request params: none.",
  "type": "object",
  "properties": {
    "image": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/*", "minLength": 1, "description": "The image: JPEG or PNG."}
  },
  "required": ["image"],
  "additionalProperties": false
}`)

// outputSchema is the JSON Schema of the output, published in the catalog.
var outputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "ocr output",
  "description": "The text found in the image, one entry per text box in reading order.",
  "type": "object",
  "properties": {
    "lines": {
      "type": "array",
      "items": {
        "type": "object",
        "properties": {
          "text": {"type": "string"},
          "confidence": {"type": "number", "minimum": 0, "maximum": 1, "description": "Mean probability of the line's characters."},
          "box": {
            "type": "array", "minItems": 4, "maxItems": 4,
            "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
            "description": "Corners [x, y] in image pixels: top-left, top-right, bottom-right, bottom-left."
          }
        },
        "required": ["text", "confidence", "box"]
      }
    },
    "text": {"type": "string", "description": "All lines' text: boxes of one row joined by a space, rows by a newline."},
    "width": {"type": "integer", "minimum": 1, "description": "Image width in pixels."},
    "height": {"type": "integer", "minimum": 1, "description": "Image height in pixels."}
  },
  "required": ["lines", "text", "width", "height"]
}`)
