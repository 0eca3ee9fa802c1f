// Package anomaly is the built-in telemetry anomaly detector: a pure-Go,
// online model that keeps a small state per (device, sensor) series and
// judges each new sample against what that series has shown so far.
//
// # Input
//
// One sample:
//
//	{"sensor": "temp", "value": 21.5, "ts": 1732500000000}
//
// or a batch of samples of one sensor, in time order:
//
//	{"sensor": "temp", "values": [21.5, 21.6, 21.4], "ts": [1732500000000, 1732500001000, 1732500002000]}
//
// The fields:
//
//   - sensor: required, 1–64 characters of [A-Za-z0-9._-]. The series is
//     keyed on the requesting device and this id.
//   - value / values: exactly one of them. Finite JSON numbers with
//     |x| ≤ MaxAbsValue (1e100). A batch holds 1 to MaxBatch (10,000) values.
//   - ts: optional. For one sample, the time of the sample as integer unix
//     milliseconds or an RFC 3339 string ("2024-11-25T01:20:00Z"); for a
//     batch, an array of those with exactly one entry per value. A sample
//     whose ts is not later than the last ts the series has seen is a
//     duplicate (a QoS 1 redelivery) or out of order: it is answered with
//     "stale": true and left out of the series state. Samples without ts are
//     always taken in arrival order.
//
// Unknown fields are rejected. Every rejection is an inference.InvalidInput
// error whose message names the offending field.
//
// # Params
//
// Optional per-request thresholds (request "params"), the defaults shown:
//
//	{"z": 4, "mad": 5, "cusum_h": 5, "cusum_k": 0.5}
//
// z (0 < z ≤ 100) is the EWMA z-score threshold and mad (0 < mad ≤ 100) the
// robust (median/MAD) z-score threshold; cusum_h (0 < h ≤ 1000) is the CUSUM
// decision interval and cusum_k (0 ≤ k ≤ 10) its allowance per sample; all
// in standard deviations. They apply to the samples of that request; as
// flagged spikes stay out of the robust window and a level-shift alarm
// re-learns the baseline, they also shape what the series keeps. With the
// defaults, pure Gaussian noise raises a false level-shift alarm about once
// in 500 samples (the textbook average run length of this CUSUM) and a false
// spike a few times in 10,000; cusum_h 8 makes false level shifts rare (none
// in 50,000 samples) at the cost of a few samples' delay.
//
// # Detectors
//
//   - ewma_zscore: z = (x − mean) / std with an exponentially weighted mean
//     (α = 0.05) and variance (α = 0.02). Finds spikes.
//   - mad: r = (x − median) / (1.4826 · MAD) over the last Window (64)
//     samples that were not flagged as spikes; active once the window holds
//     at least 16 such samples. Finds spikes robustly, whatever the recent
//     history looked like.
//   - cusum: a two-sided CUSUM of the EWMA z-score, each term clipped to ±4
//     (±1.5 for a sample already flagged as a spike, so one outlier cannot
//     raise a level-shift alarm on its own). Finds level shifts. After an
//     alarm both sums reset and the baseline re-learns the new level from the
//     samples since the shift began.
//
// Spikes do not poison the baseline: the EWMA takes every sample winsorised
// to mean ± 3·std, and flagged spikes stay out of the median/MAD window.
//
// A series learns from its first Warmup (19) samples and decides from the
// 20th sample on; before that results say "warming_up": true and never
// flag anything.
//
// # Output
//
// For one sample, a [Result]; for a batch, a [BatchResult] with one Result
// per value. Result.Score is the largest normalised evidence: each
// detector's statistic divided by its threshold (|z|/z, |r|/mad,
// max(S⁺, S⁻)/cusum_h), so a score of 1 or more means that detector fired.
// Scores holds all three.
//
// # State
//
// State is bounded: at most Config.MaxSeries series (about 0.9 KB of heap
// each, so 90 MB at the default 100,000), the least recently used dropped
// first, and series idle for longer than Config.IdleTTL dropped by
// [Model.EvictIdle] or [Model.Run]. A dropped series starts over with a new
// warm-up.
package anomaly
