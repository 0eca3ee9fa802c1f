// Package vad is voice activity detection with Silero VAD v5 (MIT; npm
// @ricky0123/vad-web@0.0.31, package/dist/silero_vad_v5.onnx) on ONNX
// Runtime: a speech probability for every 32 ms frame of 16 kHz mono audio,
// and the speech segments those probabilities make. Each device streams its
// audio in chunks of any length; the model carries the stream from one
// chunk to the next.
//
// # Input
//
//	{"pcm16": "<base64 of int16 little-endian mono 16 kHz samples>"}
//
// or, for convenience, samples as numbers scaled to [-1, 1] (int16 / 32768):
//
//	{"samples": [0.01, -0.02, ...]}
//
// Exactly one of pcm16 and samples, of any length up to Config.MaxSamples
// (60 s by default; an empty chunk is fine). pcm16 is standard base64,
// padded or not, of an even number of bytes. Optional fields:
// "sample_rate": 16000 (the only rate accepted: resample anything else
// first) and "reset": true, which drops the device's carried stream before
// this chunk, so that it starts a new stream at offset 0. Unknown fields are
// rejected. Every rejection is an inference.InvalidInput error naming the
// field, and leaves the stream unchanged.
//
// # Params
//
// Optional, the defaults shown (those of Silero's reference
// get_speech_timestamps):
//
//	{"threshold": 0.5, "min_speech_ms": 250, "min_silence_ms": 100, "pad_ms": 30}
//
// threshold is in (0, 1], the durations in [0, 60000] ms, and pad_ms at most
// (min_silence_ms + 32) / 2 so that padded segments cannot overlap (Silero's
// reference would split the gap between them instead). Params shape only
// the segments, never the frame probabilities; they apply to the frames of
// the request that gives them.
//
// # Output
//
// A [Result]: frames (the probability of each frame this chunk completed,
// rounded to 3 decimals), frame_ms (32), frames_start_ms, segments, speech,
// offset_ms, duration_ms and pending_ms.
//
// Segments follow the reference hysteresis: speech starts at the first
// frame whose probability is at least threshold, and ends at the first
// frame below max(threshold − 0.15, 0.01) that is followed by min_silence_ms
// of such frames (a frame at or above threshold cancels the pending end);
// segments not longer than min_speech_ms are dropped; each segment is then
// widened by pad_ms on both sides, never before 0 or the previous segment.
// Like the reference, there is no maximum speech duration.
//
// # Streams and times
//
// Every time in the output is in milliseconds of the device's stream: 0 is
// the start of the device's first chunk (or of the chunk that reset it),
// and each chunk continues where the previous one ended (offset_ms), so a
// device that sends 1000-sample chunks gets continuous times. The stream
// carries the model's recurrent state, the last 64 samples of the previous
// frame (the model's context), the samples that did not fill a 512-sample
// frame (pending_ms; they start the next chunk's first frame, which is why
// frames_start_ms can be before offset_ms), and the speech segment still
// open. Streamed in chunks of any lengths, the audio gets exactly the
// probabilities and segments of one request with all of it.
//
// A segment appears in the response of the chunk in which it ends. A
// segment that has not ended by the end of a chunk, and is already longer
// than min_speech_ms, is listed last with "open": true and end_ms at the end
// of the audio received; it is reported again, with the same start_ms, in
// each later response until it closes. speech is true when segments is not
// empty. A trailing partial frame is never scored: the last up to 31 ms of
// audio wait in pending_ms for the next chunk.
//
// Requests of one device are serialized: they run one at a time against
// its stream, in the order they take the stream's lock (send a device's
// chunks one after the other, or the order between concurrent ones is not
// defined). Different devices run in parallel on the one ONNX Runtime
// session. A request that fails (bad input, a canceled context, a runtime
// error) leaves the stream as it was, so the device may resend the chunk.
//
// # State
//
// At most Config.MaxStreams streams (10,000 by default; a few KB of heap
// each) are kept, the least recently used idle one dropped first, and a
// stream idle for longer than Config.IdleTTL (5 minutes by default) is
// dropped by [Model.EvictIdle] or [Model.Run]. A stream in use is never
// dropped. A device whose stream was dropped starts over at offset 0 with a
// fresh model state.
package vad
