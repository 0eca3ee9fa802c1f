#!/usr/bin/python3
"""Writes the small ONNX graphs the repository's tests serve, into argv[1]:

  affine2.onnx     y = 2x + 1        x, y: float32 [N, 4]
  affine3.onnx     y = 3x + 1        x, y: float32 [N, 4]
  classifier.onnx  logits = x W + b  x: float32 [N, 3], logits: float32 [N, 4]
  increment.onnx   y = x + 1         x, y: int64 [N]
  pass4.onnx       y = x             x, y: float32 [A, B, C, D] (images)
  gain.onnx        y = x * g         x, y: float32 [N, S]; g: float32 [1] (audio)

Made with Debian's python3-onnx (onnx.helper), so that the tests run real
graphs whose arithmetic they can check.
"""
import os
import sys

import numpy as np
from onnx import TensorProto, checker, helper, numpy_helper, save

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def model(name, nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="mqttinfer-tests")
    m.ir_version = 8
    checker.check_model(m)
    save(m, os.path.join(out, name + ".onnx"))


def affine(scale, name):
    model(name,
          [helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "one"], ["y"])],
          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
          [numpy_helper.from_array(np.array([scale], dtype=np.float32), "scale"),
           numpy_helper.from_array(np.array([1], dtype=np.float32), "one")])


affine(2, "affine2")
affine(3, "affine3")

W = np.array([[1, 0, 0, 2], [0, 1, 0, -1], [0, 0, 1, 0.5]], dtype=np.float32)
b = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
model("classifier",
      [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
      [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])

model("increment",
      [helper.make_node("Add", ["x", "one"], ["y"])],
      [helper.make_tensor_value_info("x", TensorProto.INT64, ["N"])],
      [helper.make_tensor_value_info("y", TensorProto.INT64, ["N"])],
      [numpy_helper.from_array(np.array([1], dtype=np.int64), "one")])

model("pass4",
      [helper.make_node("Mul", ["x", "one"], ["y"])],
      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["A", "B", "C", "D"])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", "B", "C", "D"])],
      [numpy_helper.from_array(np.array([1], dtype=np.float32), "one")])

model("gain",
      [helper.make_node("Mul", ["x", "g"], ["y"])],
      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S"]),
       helper.make_tensor_value_info("g", TensorProto.FLOAT, [1])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"])],
      [])
