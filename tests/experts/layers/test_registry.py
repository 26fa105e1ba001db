"""The op registry (experts/layers): every op's model.json keys round-trip, bad keys are
named, and an op declared in one module alone reaches every part of the project."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from experts.layers import LAYERS, Layer, SpecError, parse_layer
from experts.layers.base import register
from experts.model.architectures import ARCHITECTURES, random_weights
from experts.model.mixture import PARTS, is_mixture
from experts.model.repository import Repository, default_root
from experts.model.spec import parse_layers
from experts.networks.network import Network
from experts.networks.reference import forward
from tests.helpers import TINY


def every_layer_list() -> list[list[dict[str, Any]]]:
    """The layer lists of the built-in architectures and the shipped models."""
    metas = [build() for build in ARCHITECTURES.values()]
    repo = Repository(default_root())
    metas += [json.loads((repo.path(name) / "model.json").read_text()) for name in repo.names()]
    return [m[part] for m in metas for part in (PARTS if is_mixture(m) else ("layers",))]


def test_model_json_round_trips_through_the_typed_layers():
    """Every layer of every known model parses, and its JSON form parses back to the
    same layer: the model.json format is what it was."""
    lists = every_layer_list()
    ops = {layer["op"] for layers in lists for layer in layers}
    assert ops == set(LAYERS) - {"avgpool", "relu"}  # (those two only in user models)
    for layers in lists:
        parsed = parse_layers(layers)
        assert parse_layers([layer.to_json() for layer in parsed]) == parsed


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"op": "conv", "kernel": 3}, "missing required key 'out_channels'"),
        ({"op": "conv", "out_channels": "8", "kernel": 3}, "out_channels must be an integer"),
        ({"op": "conv", "out_channels": 8, "kernel": [3]}, "kernel must be an int or a pair"),
        ({"op": "lrn", "alpha": "small"}, "alpha must be a finite number"),
        ({"op": "linear", "out_features": 4, "relu": 1}, "relu must be true or false"),
        ({"op": "maxpool", "kernel": 3, "size": 2}, "unknown keys ['size'] for op 'maxpool'"),
        ({"op": "fc", "out_features": 4}, "unknown op 'fc'; supported: "),
        ({"name": 3, "op": "relu"}, "name must be a non-empty string"),
    ],
)
def test_bad_keys_are_named(doc, message):
    with pytest.raises(SpecError, match="layer 2") as info:
        parse_layer(doc, 2)
    assert message in str(info.value)


@dataclass(frozen=True)
class Shift(Layer):
    """A test op declared here and nowhere else: a shift by `amount`, of which only 0
    is supported, so it is the identity and every runtime has an exact answer."""

    amount: int = 0

    op: ClassVar[str] = "shift"

    def check(self, where: str) -> None:
        if self.amount != 0:
            raise SpecError(f"{where}: only a shift of 0 is supported")

    def launcher(self, build: Any, in_shape: Any, weights: Any) -> None:
        return None  # the output is the input

    def reference(self, x: np.ndarray, weights: Any) -> np.ndarray:
        return x

    def torch_module(self, in_shape: Any) -> Any:
        from torch import nn

        return nn.Identity()

    def to_onnx(self, graph: Any, x: str, shape: Any) -> str:
        return graph.node("Identity", [x], self.name)


@pytest.fixture
def shift_registered():
    register(Shift)
    try:
        yield
    finally:
        del LAYERS["shift"]


def test_a_new_op_is_one_class(shift_registered, device):
    """Registering one class is all it takes: model.json parsing and its checks, shape
    inference, the OpenCL network, the numpy reference, the ONNX export and the torch
    module all take the new op without another file changing."""
    layers = [*TINY["layers"][:2], {"name": "s", "op": "shift"}, *TINY["layers"][2:]]
    with pytest.raises(SpecError, match="only a shift of 0"):
        parse_layers([{"name": "s", "op": "shift", "amount": 2}])
    meta = {**TINY, "layers": layers}
    weights = random_weights(meta, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16), np.float32)
    plain = Network(device, parse_layers(TINY["layers"]), (3, 16, 16), weights)
    shifted = Network(device, parse_layers(layers), (3, 16, 16), weights)
    np.testing.assert_array_equal(shifted.run(x).scores, plain.run(x).scores)
    np.testing.assert_array_equal(
        forward(parse_layers(layers), weights, x), forward(parse_layers(TINY["layers"]), weights, x)
    )
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    from experts.onnx.export import to_onnx

    session = ort.InferenceSession(to_onnx(meta, weights).SerializeToString())
    got = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, plain.run(x).scores, rtol=1e-4, atol=1e-5)
    pytest.importorskip("torch", reason="torch (the train extra) is not installed")
    from experts.training.nets import SpecNet, load_weights, torch_predictions

    net = SpecNet(parse_layers(layers), (3, 16, 16))
    load_weights(net, weights)
    np.testing.assert_allclose(torch_predictions(net, x), plain.run(x).scores, rtol=1e-4)
