package anomaly

import "encoding/json"

// inputSchema is the JSON Schema of the input, published in the catalog.
var inputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "anomaly input",
  "description": "One telemetry sample (value) or a time-ordered batch (values) of one sensor. The series is keyed on the requesting device and the sensor; it decides from its 20th sample on. A sample whose ts is not later than the series' last ts is answered stale and not learned from.",
  "$comment": "Optional request params: {\"z\": 4, \"mad\": 5, \"cusum_h\": 5, \"cusum_k\": 0.5} (thresholds in standard deviations; the defaults shown).",
  "type": "object",
  "properties": {
    "sensor": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "description": "Sensor id."},
    "value": {"type": "number", "minimum": -1e100, "maximum": 1e100, "description": "One sample."},
    "values": {
      "type": "array", "minItems": 1, "maxItems": 10000,
      "items": {"type": "number", "minimum": -1e100, "maximum": 1e100},
      "description": "A batch of samples, oldest first."
    },
    "ts": {
      "description": "Sample time: with value, one timestamp; with values, an array with one timestamp per value.",
      "oneOf": [
        {"$ref": "#/$defs/ts"},
        {"type": "array", "items": {"$ref": "#/$defs/ts"}, "minItems": 1, "maxItems": 10000}
      ]
    }
  },
  "required": ["sensor"],
  "oneOf": [{"required": ["value"]}, {"required": ["values"]}],
  "additionalProperties": false,
  "$defs": {
    "ts": {
      "oneOf": [
        {"type": "integer", "description": "Unix milliseconds."},
        {"type": "string", "format": "date-time", "description": "RFC 3339."}
      ]
    }
  }
}`)

// outputSchema is the JSON Schema of the output, published in the catalog.
var outputSchema = json.RawMessage(`{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "anomaly output",
  "description": "The verdict on one sample, or on each sample of a batch.",
  "oneOf": [{"$ref": "#/$defs/result"}, {"$ref": "#/$defs/batch"}],
  "$defs": {
    "batch": {
      "type": "object",
      "properties": {
        "sensor": {"type": "string"},
        "results": {"type": "array", "items": {"$ref": "#/$defs/result"}, "description": "One per input value, in order; without sensor."},
        "anomalies": {"type": "integer", "minimum": 0, "description": "How many results are anomalous."}
      },
      "required": ["sensor", "results", "anomalies"]
    },
    "result": {
      "type": "object",
      "properties": {
        "sensor": {"type": "string"},
        "ts": {"type": "integer", "description": "Sample time in unix milliseconds, when given."},
        "value": {"type": "number"},
        "score": {"type": "number", "minimum": 0, "description": "Largest detector statistic divided by its threshold; 1 or more is anomalous."},
        "is_anomaly": {"type": "boolean"},
        "method": {"enum": ["none", "ewma_zscore", "mad", "cusum"], "description": "Strongest detector that fired."},
        "methods": {"type": "array", "items": {"enum": ["ewma_zscore", "mad", "cusum"]}, "description": "Every detector that fired, strongest first."},
        "kind": {"enum": ["spike", "level_shift"], "description": "level_shift when the CUSUM fired, else spike; only on anomalies."},
        "scores": {
          "type": "object",
          "properties": {
            "ewma_zscore": {"type": "number", "minimum": 0},
            "mad": {"type": "number", "minimum": 0},
            "cusum": {"type": "number", "minimum": 0}
          },
          "required": ["ewma_zscore", "mad", "cusum"]
        },
        "baseline": {
          "type": "object",
          "description": "What the sample was compared against: the series state before it.",
          "properties": {
            "mean": {"type": "number", "description": "EWMA mean."},
            "std": {"type": "number", "minimum": 0, "description": "EWMA standard deviation."},
            "median": {"type": "number", "description": "Median of the robust window."},
            "mad": {"type": "number", "minimum": 0, "description": "Median absolute deviation of the robust window (raw, not scaled)."},
            "n": {"type": "integer", "minimum": 0, "description": "Samples in the robust window."}
          },
          "required": ["mean", "std", "median", "mad", "n"]
        },
        "warming_up": {"type": "boolean", "description": "True for the first 19 samples of a series, which are learned from, never flagged."},
        "stale": {"type": "boolean", "description": "True when ts was not later than the series' last ts: not judged, not learned from."},
        "n": {"type": "integer", "minimum": 0, "description": "Samples the series has taken in."}
      },
      "required": ["value", "score", "is_anomaly", "method", "scores", "baseline", "warming_up", "n"]
    }
  }
}`)
