package vad

import (
	"encoding/json"
	"strconv"
	"strings"
)

// inputSchema is the JSON Schema of the input for requests of at most
// maxSamples samples, published in the catalog.
func inputSchema(maxSamples int) json.RawMessage {
	return json.RawMessage(strings.NewReplacer("MAXSAMPLES", strconv.Itoa(maxSamples), "MAXSECONDS", seconds(maxSamples)).Replace(inputSchemaTemplate))
}

const inputSchemaTemplate = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "vad input",
  "description": "A chunk of 16 kHz mono audio of any length, continuing the requesting device's stream: the model state, the samples that did not fill a 32 ms frame and the open speech segment carry over to the device's next request (dropped after 5 minutes idle by default). Give exactly one of pcm16 and samples.",
  "$comment": "Optional request params: {\"threshold\": 0.5, \"min_speech_ms\": 250, \"min_silence_ms\": 100, \"pad_ms\": 30} (the defaults; pad_ms at most (min_silence_ms + 32) / 2).",
  "type": "object",
  "properties": {
    "pcm16": {"type": "string", "contentEncoding": "base64", "description": "Base64 (standard alphabet, padding optional) of int16 little-endian samples; an even number of bytes, at most MAXSAMPLES samples (MAXSECONDS)."},
    "samples": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1}, "maxItems": MAXSAMPLES, "description": "Samples scaled to [-1, 1] (int16 / 32768)."},
    "sample_rate": {"const": 16000, "description": "Hz; only 16000 is accepted."},
    "reset": {"type": "boolean", "description": "Drop the device's carried stream first: this chunk starts a new stream at offset 0."}
  },
  "oneOf": [{"required": ["pcm16"]}, {"required": ["samples"]}],
  "additionalProperties": false
}`

// outputSchema is the JSON Schema of the output, published in the catalog.
var outputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "vad output",
  "description": "Speech probabilities of the 32 ms frames this chunk completed and the speech segments, all times in milliseconds of the device's stream (0 at its first chunk or last reset).",
  "type": "object",
  "properties": {
    "frames": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "description": "Speech probability per frame, rounded to 3 decimals."},
    "frame_ms": {"const": 32},
    "frames_start_ms": {"type": "number", "minimum": 0, "description": "Where frames[0] starts; before offset_ms when samples held back from the previous chunk began it."},
    "segments": {
      "type": "array",
      "description": "Speech segments that ended in this chunk, then the one still open at its end (open: true, end_ms = end of the audio received); an open segment is reported again, with the same start_ms, until it closes.",
      "items": {
        "type": "object",
        "properties": {
          "start_ms": {"type": "number", "minimum": 0},
          "end_ms": {"type": "number", "minimum": 0},
          "open": {"type": "boolean"}
        },
        "required": ["start_ms", "end_ms"]
      }
    },
    "speech": {"type": "boolean", "description": "True when segments is not empty."},
    "offset_ms": {"type": "number", "minimum": 0, "description": "Where this chunk starts in the stream."},
    "duration_ms": {"type": "number", "minimum": 0, "description": "Duration of this chunk's audio."},
    "pending_ms": {"type": "number", "minimum": 0, "exclusiveMaximum": 32, "description": "Audio held back for the next chunk because it did not fill a frame."}
  },
  "required": ["frames", "frame_ms", "frames_start_ms", "segments", "speech", "offset_ms", "duration_ms", "pending_ms"]
}`)
