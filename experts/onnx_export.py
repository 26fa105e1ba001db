"""model.json + weights -> ONNX, so the same network can run in onnxruntime (the
correctness oracle and benchmark baseline) and be handed to other tools.

Every layer maps to standard ONNX operators with the engine's exact semantics; the one
construction without a direct ONNX equivalent, an adaptive average pool whose input does
not divide into the output, is written as two constant averaging MatMuls (rows and
columns), which `experts.onnx_import` recognises and turns back into `adaptive_avgpool`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from experts.spec import SpecError, expected_params, infer_shapes, normalise_layers
from kernels.geometry import pool_out

MIN_OPSET, MAX_OPSET = 11, 21
INPUT, OUTPUT = "input", "output"


def adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out x size) averaging matrix of a 1-D adaptive average pool: row i averages
    [floor(i*size/out), ceil((i+1)*size/out)), as torch does."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class _Graph:
    """Collects nodes and initializers; every node output gets a fresh, unique name."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def weight(self, key: str) -> str:
        return self.const(key, np.asarray(self.weights[key], np.float32))

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        out = f"{name}:out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def relu_if(self, layer: dict[str, Any], x: str) -> str:
        return self.node("Relu", [x], f"{layer['name']}/relu") if layer["relu"] else x


def _params(layer: dict[str, Any]) -> list[str]:
    name = layer["name"]
    return [f"{name}.weight", f"{name}.bias"] if layer["bias"] else [f"{name}.weight"]


def _conv(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    ph, pw = layer["padding"]
    y = g.node(
        "Conv",
        [x, *(g.weight(k) for k in _params(layer))],
        layer["name"],
        kernel_shape=list(layer["kernel"]),
        strides=list(layer["stride"]),
        pads=[ph, pw, ph, pw],
        group=layer["groups"],
    )
    return g.relu_if(layer, y)


def _pool_attrs(layer: dict[str, Any]) -> dict[str, Any]:
    ph, pw = layer["padding"]
    return {
        "kernel_shape": list(layer["kernel"]),
        "strides": list(layer["stride"]),
        "pads": [ph, pw, ph, pw],
        "ceil_mode": int(layer["ceil_mode"]),
    }


def onnx_ceil_pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Pooled length by ONNX's shape-inference formula, which keeps a ceil-mode window
    that starts in the right padding (torch, onnxruntime and the engine drop it)."""
    return -(-(size + 2 * pad - kernel) // stride) + 1


def _trim_ceil_overhang(g: _Graph, layer: dict[str, Any], y: str, shape: tuple[int, ...]) -> str:
    """Slice a ceil-mode pool to the engine's size: exact whether the runtime drops the
    window starting in the padding or not, and shape inference agrees."""
    if not layer["ceil_mode"]:
        return y
    axes = list(zip(shape[1:], layer["kernel"], layer["stride"], layer["padding"], strict=True))
    want = [pool_out(n, k, s, p, True) for n, k, s, p in axes]
    if want == [onnx_ceil_pool_out(n, k, s, p) for n, k, s, p in axes]:
        return y
    name = layer["name"]
    ints = [g.const(f"{name}.trim_{key}", np.array(v, np.int64))
            for key, v in (("starts", [0, 0]), ("ends", want), ("axes", [2, 3]))]  # fmt: skip
    return g.node("Slice", [y, *ints], f"{name}/trim")


def _maxpool(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    y = g.node("MaxPool", [x], layer["name"], **_pool_attrs(layer))
    return _trim_ceil_overhang(g, layer, y, shape)


def _avgpool(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    attrs = _pool_attrs(layer) | {"count_include_pad": int(layer["count_include_pad"])}
    y = g.node("AveragePool", [x], layer["name"], **attrs)
    return _trim_ceil_overhang(g, layer, y, shape)


def _adaptive_avgpool(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    (_, h, w), (oh, ow), name = shape, layer["output_size"], layer["name"]
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", [x], name)
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return g.node("AveragePool", [x], name, kernel_shape=k, strides=k)
    # out = A_h @ x @ A_w^T, MatMul broadcasting over N and C
    cols = g.const(f"{name}.avg_cols", adaptive_matrix(w, ow).T)
    rows = g.const(f"{name}.avg_rows", adaptive_matrix(h, oh))
    y = g.node("MatMul", [x, cols], name)
    return g.node("MatMul", [rows, y], f"{name}/rows")


def _lrn(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    return g.node(
        "LRN",
        [x],
        layer["name"],
        size=layer["size"],
        alpha=float(layer["alpha"]),
        beta=float(layer["beta"]),
        bias=float(layer["k"]),
    )


def _relu(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    return g.node("Relu", [x], layer["name"])


def _dropout(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    return x  # the identity at inference


def _flatten(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    return g.node("Flatten", [x], layer["name"], axis=1)


def _linear(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    inputs = [x, *(g.weight(k) for k in _params(layer))]
    y = g.node("Gemm", inputs, layer["name"], transB=1)
    return g.relu_if(layer, y)


def _softmax(g: _Graph, layer: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    # the engine normalises over the last axis; on N x features that is axis 1
    return g.node("Softmax", [x], layer["name"], axis=1 if len(shape) == 1 else -1)


Exporter = Callable[[_Graph, dict[str, Any], str, tuple[int, ...]], str]
EXPORTERS: dict[str, Exporter] = {
    "conv": _conv,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "adaptive_avgpool": _adaptive_avgpool,
    "lrn": _lrn,
    "relu": _relu,
    "dropout": _dropout,
    "flatten": _flatten,
    "linear": _linear,
    "softmax": _softmax,
}


def _check_weights(
    layers: list[dict[str, Any]], shape: Sequence[int], weights: dict[str, np.ndarray]
) -> None:
    want = expected_params(layers, shape)
    missing = sorted(set(want) - set(weights))
    if missing:
        raise SpecError(f"weights missing for {missing}")
    for key, expect in want.items():
        got = tuple(np.shape(weights[key]))
        if got != expect:
            raise SpecError(f"weight {key} has shape {got}, the layers need {expect}")


def to_onnx(
    meta: dict[str, Any], weights: dict[str, np.ndarray], opset: int = 17
) -> onnx.ModelProto:
    """Build a checked ONNX model computing exactly what the engine computes for `meta`.

    Input "input" is float32 [N, C, H, W] with a symbolic batch; output is "output".
    Weights become initializers under their safetensors names.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} not supported; use {MIN_OPSET} to {MAX_OPSET}")
    layers = normalise_layers(meta["layers"])
    in_shape = tuple(int(s) for s in meta["input"]["shape"])
    shapes = infer_shapes(layers, in_shape)
    _check_weights(layers, in_shape, weights)

    g = _Graph(weights)
    x, shape = INPUT, in_shape
    for layer, out_shape in zip(layers, shapes, strict=True):
        x = EXPORTERS[layer["op"]](g, layer, x, shape)
        shape = out_shape
    if x == INPUT:  # nothing but dropouts
        x = g.node("Identity", [x], "identity")
    g.nodes[-1].output[0] = OUTPUT

    graph = helper.make_graph(
        g.nodes,
        str(meta.get("name", "model")),
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", *shape])],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="moe-alexnet",
        doc_string=str(meta.get("description", "")),
    )
    onnx.checker.check_model(model, full_check=True)
    return model
