"""ONNX export (experts/onnx/export.py) of hand-written specs: exported and imported
back, the layers and weights are the same; in onnxruntime the export computes what the
numpy reference computes; wrong weights and old opsets are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from experts.model.spec import expected_params, parse_layers  # noqa: E402
from experts.networks.reference import forward  # noqa: E402
from experts.onnx.export import to_onnx  # noqa: E402
from experts.onnx.importer import import_onnx  # noqa: E402
from tests.experts.onnx.graphs import rand, run_ort  # noqa: E402

HAND_LAYERS = [
    {
        "name": "conv1",
        "op": "conv",
        "out_channels": 6,
        "kernel": [3, 2],
        "stride": [1, 2],
        "padding": [1, 0],
        "groups": 3,
        "relu": True,
    },
    {"name": "norm1", "op": "lrn", "size": 4, "alpha": 1e-3, "beta": 0.75, "k": 2.0},
    # ceil mode whose last row window would start in the padding: exported with a trim
    {"name": "pool1", "op": "maxpool", "kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True},
    {"name": "pool2", "op": "avgpool", "kernel": 2, "stride": 1, "count_include_pad": False},
    {"name": "relu2", "op": "relu"},
    {"name": "pool3", "op": "adaptive_avgpool", "output_size": 3},  # 5x5 -> 3x3
    {"name": "flatten", "op": "flatten"},
    {"name": "fc1", "op": "linear", "out_features": 7, "relu": True},
    {"name": "drop1", "op": "dropout"},
    {"name": "fc2", "op": "linear", "out_features": 4, "bias": False},
    {"name": "prob", "op": "softmax"},
]


def hand_model(layers: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = {"name": "hand", "input": {"shape": [3, 11, 21]}, "layers": layers}
    params = expected_params(parse_layers(layers), meta["input"]["shape"])
    return meta, {key: rand(*shape) for key, shape in params.items()}


@pytest.mark.parametrize("opset", [11, 17, 21])
def test_export_then_import_keeps_layers(opset: int) -> None:
    meta, weights = hand_model(HAND_LAYERS)
    model = to_onnx(meta, weights, opset)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Slice") == 1 and ops.count("MatMul") == 2 and "Dropout" not in ops
    back, back_weights = import_onnx(model, "hand")
    without_dropout = [layer for layer in HAND_LAYERS if layer["op"] != "dropout"]
    assert parse_layers(back["layers"]) == parse_layers(without_dropout)
    assert back["input"]["shape"] == [3, 11, 21]
    assert back_weights.keys() == weights.keys()
    for key, value in weights.items():
        np.testing.assert_array_equal(back_weights[key], value)


@pytest.mark.parametrize("opset", [11, 17, 21])
def test_export_matches_numpy_reference(opset: int) -> None:
    # onnxruntime's LRN takes odd sizes only; everything else as in HAND_LAYERS
    layers = [dict(layer, size=5) if layer["op"] == "lrn" else layer for layer in HAND_LAYERS]
    layers[3] = dict(layers[3], count_include_pad=True, padding=1, ceil_mode=True)
    meta, weights = hand_model(layers)
    x = rand(2, 3, 11, 21)
    got = run_ort(to_onnx(meta, weights, opset), x)
    np.testing.assert_allclose(got, forward(parse_layers(layers), weights, x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "out", "op"),
    [(6, 1, "GlobalAveragePool"), (6, 3, "AveragePool"), (5, 3, "MatMul"), (4, 6, "MatMul")],
)
def test_export_adaptive_pool(size: int, out: int, op: str) -> None:
    layers = [{"name": "pool", "op": "adaptive_avgpool", "output_size": out}]
    meta = {"input": {"shape": [2, size, size]}, "layers": layers}
    model = to_onnx(meta, {})
    assert model.graph.node[0].op_type == op
    x = rand(3, 2, size, size)
    got = run_ort(model, x).reshape(3, -1)
    np.testing.assert_allclose(got, forward(parse_layers(layers), {}, x), rtol=1e-5, atol=1e-7)


def test_export_rejects_wrong_weights() -> None:
    meta, weights = hand_model(HAND_LAYERS)
    weights["fc1.weight"] = weights["fc1.weight"][:, :-1]
    with pytest.raises(ValueError, match="fc1.weight"):
        to_onnx(meta, weights)
    with pytest.raises(ValueError, match="opset 9"):
        to_onnx(meta, weights, opset=9)
