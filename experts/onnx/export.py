"""model.json + weights -> ONNX, so the same network can run in onnxruntime (the
correctness oracle and benchmark baseline) and be handed to other tools.

Every layer maps itself to standard ONNX operators with the engine's exact semantics
(the `to_onnx` of its op in experts/layers), through the graph builder here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from experts.layers import Layer, SpecError
from experts.model.spec import expected_params, infer_shapes, parse_layers
from experts.onnx.graph import MAX_OPSET, MIN_OPSET

INPUT, OUTPUT = "input", "output"


class Graph:
    """Collects nodes and initializers; every node output gets a fresh, unique name."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        out = f"{name}:out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def params(self, layer: Layer) -> list[str]:
        """A weighted layer's weight (and bias) as initializers."""
        keys = [f"{layer.name}.weight"] + ([f"{layer.name}.bias"] if layer.bias else [])
        return [self.const(key, np.asarray(self.weights[key], np.float32)) for key in keys]

    def relu_if(self, layer: Layer, x: str) -> str:
        return self.node("Relu", [x], f"{layer.name}/relu") if layer.relu else x


def _check_weights(
    layers: list[Layer], shape: Sequence[int], weights: dict[str, np.ndarray]
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
    layers = parse_layers(meta["layers"])
    in_shape = tuple(int(s) for s in meta["input"]["shape"])
    shapes = infer_shapes(layers, in_shape)
    _check_weights(layers, in_shape, weights)

    g = Graph(weights)
    x, shape = INPUT, in_shape
    for layer, out_shape in zip(layers, shapes, strict=True):
        x = layer.to_onnx(g, x, shape)
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
