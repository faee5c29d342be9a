"""Small ONNX models built with onnx.helper, for the ONNX Runtime backend's tests and benchmark.

Each builder returns the serialized model (the bytes of a ``model.onnx``). Dimension names
(strings) are symbolic, which ONNX Runtime reports as dynamic: a symbolic first dimension
is what lets a model batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # what the installed ONNX Runtime reads (newer onnx packages write newer by default)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto] | None = None, name: str = "model") -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def classifier_weights(features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((features, classes)).astype(np.float32),
            rng.standard_normal(classes).astype(np.float32))


def classifier(features: int = 4, classes: int = 3, seed: int = 0, batch: str | int = "batch") -> bytes:
    """INPUT FP32 [batch, features] -> PROBS FP32 [batch, classes], a linear layer's softmax; LABEL INT64 [batch, 1]."""
    weight, bias = classifier_weights(features, classes, seed)
    nodes = [
        helper.make_node("MatMul", ["INPUT", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["PROBS"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["LABEL"], axis=-1, keepdims=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, [batch, features])],
                  [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, [batch, classes]),
                   helper.make_tensor_value_info("LABEL", TensorProto.INT64, [batch, 1])],
                  [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")], "classifier")


def add_sub(size: int = 16, datatype: int = TensorProto.INT32) -> bytes:
    """Triton's "simple": INPUT0, INPUT1 [batch, size] -> OUTPUT0 = sum, OUTPUT1 = difference."""
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return _model(nodes, [helper.make_tensor_value_info(n, datatype, ["batch", size]) for n in ("INPUT0", "INPUT1")],
                  [helper.make_tensor_value_info(n, datatype, ["batch", size]) for n in ("OUTPUT0", "OUTPUT1")],
                  name="add_sub")


def fixed(rows: int = 2, cols: int = 3) -> bytes:
    """No batch dimension: X FP32 [rows, cols] -> Y = 2 X, SUM FP32 [] (a scalar)."""
    nodes = [helper.make_node("Add", ["X", "X"], ["Y"]), helper.make_node("ReduceSum", ["X"], ["SUM"], keepdims=0)]
    return _model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, cols])],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, cols]),
                   helper.make_tensor_value_info("SUM", TensorProto.FLOAT, [])], name="fixed")


def strings_identity() -> bytes:
    """TEXT STRING [batch, 1] -> SAME (the strings, unchanged), batched along dim 0."""
    return _model([helper.make_node("Identity", ["TEXT"], ["SAME"])],
                  [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", 1])],
                  [helper.make_tensor_value_info("SAME", TensorProto.STRING, ["batch", 1])], name="strings")


def upper(locale: str = "C") -> bytes:
    """No batch: TEXT STRING [n] -> UPPER, each string upper-cased by ONNX's StringNormalizer.

    In the "C" locale, which every system has (its default, en_US.UTF-8, needs a language pack).
    """
    node = helper.make_node("StringNormalizer", ["TEXT"], ["UPPER"], case_change_action="UPPER", locale=locale)
    return _model([node], [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["n"])],
                  [helper.make_tensor_value_info("UPPER", TensorProto.STRING, ["n"])], name="upper")


def per_row_scalar() -> bytes:
    """X FP32 [batch] (one number a row) -> DOUBLED FP32 [batch]: auto-complete gives dims [1] and an empty reshape."""
    return _model([helper.make_node("Add", ["X", "X"], ["DOUBLED"])],
                  [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch"])],
                  [helper.make_tensor_value_info("DOUBLED", TensorProto.FLOAT, ["batch"])], name="per_row")


def identity(datatype: int, dims: list[str | int]) -> bytes:
    """X -> Y unchanged, of any ONNX element type and shape (BF16 among them)."""
    return _model([helper.make_node("Identity", ["X"], ["Y"])], [helper.make_tensor_value_info("X", datatype, dims)],
                  [helper.make_tensor_value_info("Y", datatype, dims)], name="identity")


def mlp(features: int = 64, hidden: int = 256, classes: int = 10, seed: int = 0) -> bytes:
    """INPUT__0 FP32 [batch, features] -> OUTPUT__0 FP32 [batch, classes]: two dense layers, ReLU, softmax.

    The size of the example TorchScript classifier, for the benchmark.
    """
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)
               for name, shape in (("W1", (features, hidden)), ("W2", (hidden, classes)))]
    biases = [numpy_helper.from_array(np.zeros(size, dtype=np.float32), name)
              for name, size in (("B1", hidden), ("B2", classes))]
    nodes = [helper.make_node("Gemm", ["INPUT__0", "W1", "B1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("Gemm", ["h", "W2", "B2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["OUTPUT__0"], axis=-1)]
    return _model(nodes, [helper.make_tensor_value_info("INPUT__0", TensorProto.FLOAT, ["batch", features])],
                  [helper.make_tensor_value_info("OUTPUT__0", TensorProto.FLOAT, ["batch", classes])],
                  weights + biases, "mlp")


def scaled() -> bytes:
    """No batch: FACTOR FP32 [] (a scalar) and VALUES FP32 [3] -> SCALED = VALUES * FACTOR."""
    return _model([helper.make_node("Mul", ["VALUES", "FACTOR"], ["SCALED"])],
                  [helper.make_tensor_value_info("FACTOR", TensorProto.FLOAT, []),
                   helper.make_tensor_value_info("VALUES", TensorProto.FLOAT, [3])],
                  [helper.make_tensor_value_info("SCALED", TensorProto.FLOAT, [3])], name="scaled")
