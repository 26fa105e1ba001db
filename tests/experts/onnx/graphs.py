"""Helpers for the ONNX tests (not a test module): a builder of single-chain ONNX graphs,
running them in onnxruntime, and the checks an imported or exported model must pass.
Import it after `pytest.importorskip("onnx")` and `pytest.importorskip("onnxruntime")`."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from experts.model.spec import expected_params, parse_layers
from experts.onnx.export import to_onnx

RNG = np.random.default_rng(20240607)


def rand(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


class Net:
    """A chain of ONNX nodes: each `add` feeds the previous output plus constants."""

    def __init__(self, in_shape: tuple[Any, ...] = ("N", 4, 15, 15)) -> None:
        self.in_shape = in_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.x = "x"

    def add(self, op: str, name: str, *consts: np.ndarray | None, **attrs: Any) -> Net:
        extra = attrs.pop("extra_outputs", [])
        base = f"{name or op}_{len(self.nodes)}"  # tensors stay distinct for unnamed nodes
        inputs = [self.x]
        for i, value in enumerate(consts):
            key = f"{base}_c{i}" if value is not None else ""
            if value is not None:
                self.inits[key] = value
            inputs.append(key)
        self.x = f"{base}_out"
        node = helper.make_node(op, inputs, [self.x, *extra], name=name, **attrs)
        self.nodes.append(node)
        return self

    def model(self, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.in_shape))],
            [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        opsets = [helper.make_opsetid("", opset)]
        ir = helper.find_min_ir_version_for(opsets)
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir)


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the machine is shared
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_same_in_ort(
    original: onnx.ModelProto,
    meta: dict[str, Any],
    weights: dict[str, np.ndarray],
    opset: int,
    batches: tuple[int, ...] = (1, 3),
) -> None:
    exported = to_onnx(meta, weights, opset)
    for n in batches:
        x = rand(n, *meta["input"]["shape"])
        want = run_ort(original, x)
        np.testing.assert_allclose(run_ort(exported, x), want, rtol=1e-5, atol=1e-7)


def check_weights(meta: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
    layers = parse_layers(meta["layers"])
    want = expected_params(layers, meta["input"]["shape"])
    assert {k: v.shape for k, v in weights.items()} == want
    assert all(v.dtype == np.float32 for v in weights.values())
