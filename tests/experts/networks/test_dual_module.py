"""Networks with little modules (dual-module inference): against the numpy twin, the
edge cases (nothing skipped, everything skipped) equal to the plain network exactly at
every precision, shared weights, mixtures grouped and one by one, and refusals."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from experts.layers import SpecError
from experts.model.architectures import random_weights
from experts.model.dual_module import DualModuleError, Little, resolve_layers
from experts.model.model import Model
from experts.model.spec import parse_layers
from experts.networks.build import build_network
from experts.networks.dual_fit import default_rank, fit_dual_module, fit_little
from experts.networks.mixture import MixtureNetwork
from experts.networks.network import Network
from experts.networks.reference import forward
from kernels.precision import PRECISIONS
from tests.helpers import DUAL_NET, TINY_MOE
from tests.kernels.helpers import nmse


@pytest.fixture
def model() -> Model:
    return Model(copy.deepcopy(DUAL_NET), random_weights(DUAL_NET, seed=3))


def _fitted(model: Model, sample: np.ndarray, **kw: Any) -> dict[str, Little]:
    """Little modules for fc6 and fc7, fitted on `sample` (and the model's own now)."""
    model.dual_module = fit_dual_module(model.meta, model.weights, [sample], ["fc6", "fc7"], **kw)
    return model.dual_module.layers


def _with_threshold(littles: dict[str, Little], value: float) -> dict[str, Little]:
    return {n: replace(v, threshold=np.full_like(v.threshold, value)) for n, v in littles.items()}


def test_fit_little_recovers_inputs_in_a_subspace(rng):
    """Inputs on a 3-dimensional affine subspace: 3 principal directions estimate every
    pre-activation exactly; the threshold is the quantile asked for, never above 0."""
    basis = rng.standard_normal((3, 40))
    x = (rng.standard_normal((200, 3)) @ basis + rng.standard_normal(40)).astype(np.float32)
    w, b = rng.standard_normal((25, 40), np.float32), rng.standard_normal(25, np.float32)
    little = fit_little(x, w, b, rank=3, skip_target=0.3)
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert little.rank == 3
    np.testing.assert_allclose(little.estimate(x), exact, rtol=1e-4, atol=1e-3)
    assert little.threshold[0] == pytest.approx(min(np.quantile(exact, 0.3), 0.0), abs=1e-3)
    assert fit_little(x, w, b, rank=3, skip_target=0.99).threshold[0] == 0.0
    with pytest.raises(DualModuleError, match=r"skip target must lie in \(0, 1\)"):
        fit_little(x, w, b, rank=3, skip_target=1.0)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dual_network_against_its_numpy_twin(device, model, sample, precision):
    littles = _fitted(model, sample, rank=6, skip_target=0.6)
    plain = build_network(model, device, precision)
    dual = build_network(model, device, precision, dual_module=["fc6", "fc7"])
    assert isinstance(dual, type(plain)) and dual is not plain
    got = dual.run(sample).scores
    want = forward(parse_layers(model.meta["layers"]), model.weights, sample, littles=littles)
    assert nmse(got, want) < (1e-9 if precision == "fp32" else 1e-4)
    stats = dual.take_skip_stats()
    assert set(stats) == {"fc6", "fc7"}
    assert stats["fc6"].images == len(sample)
    assert 0.2 < stats["fc6"].computed_share < 0.8  # the 0.6 target, on its own images


@pytest.mark.parametrize("precision", sorted(n for n, p in PRECISIONS.items() if not p.packed))
def test_nothing_or_everything_skipped_equals_the_plain_network(device, model, sample, precision):
    """0% skip: bit for bit the plain network. 100% skip where every fc6 output is
    negative anyway (a bias far below the sums): the plain network again."""
    model.calibration = None
    littles = _fitted(model, sample, rank=4)
    plain = build_network(model, device, precision)
    want = plain.run(sample).scores
    none_skipped = plain.with_dual_module(_with_threshold(littles, -np.inf))
    np.testing.assert_array_equal(none_skipped.run(sample).scores, want)
    assert none_skipped.take_skip_stats()["fc6"].computed_share == 1.0
    np.testing.assert_array_equal(plain.run(sample).scores, want)  # shared weights intact

    model.weights["fc6.bias"] = np.full(48, -1e4, np.float32)
    plain = build_network(model, device, precision)
    all_skipped = plain.with_dual_module(_with_threshold({"fc6": littles["fc6"]}, np.inf))
    np.testing.assert_array_equal(all_skipped.run(sample).scores, plain.run(sample).scores)
    stats = all_skipped.take_skip_stats()["fc6"]
    assert (stats.computed, stats.row_reads, stats.big_bytes_per_image) == (0, 0, 0.0)


def test_the_little_modules_are_all_a_dual_network_adds(device, model, sample):
    littles = _fitted(model, sample)
    plain = build_network(model, device)
    dual = plain.with_dual_module(littles)
    assert dual.little_bytes > 0 and plain.little_bytes == 0
    assert dual.weight_bytes == plain.weight_bytes + dual.little_bytes
    big = [s.op for s in dual.steps if s.name == "fc6"][0].big
    assert big is [s.op for s in plain.steps if s.name == "fc6"][0]


def test_layers_without_an_insensitive_region_are_refused(device, model, sample):
    with pytest.raises(DualModuleError, match="fc8 is not a fully connected layer followed by"):
        resolve_layers(model.meta, ["fc8"])
    with pytest.raises(DualModuleError, match="conv1 is not a fully connected layer"):
        resolve_layers(model.meta, ["conv1"])
    with pytest.raises(DualModuleError, match="has no layer 'fc9'; layers that can: fc6, fc7"):
        resolve_layers(model.meta, ["fc9"])
    assert resolve_layers(model.meta, ["all"]) == ["fc6", "fc7"]
    littles = _fitted(model, sample)
    plain = build_network(model, device)
    with pytest.raises(SpecError, match="fc8 is not followed by ReLU"):
        plain.with_dual_module({"fc8": littles["fc7"]})


@pytest.mark.parametrize(
    "precision,grouped", [("fp32", True), ("int8", True), ("int16", True), ("int8", False)]
)
def test_mixtures_take_little_modules(device, sample, precision, grouped):
    meta = copy.deepcopy(TINY_MOE)
    model = Model(meta, random_weights(meta, seed=2))
    names = resolve_layers(meta, ["fc"])
    assert names == [f"experts.{i}.fc" for i in range(4)]
    littles = fit_dual_module(meta, model.weights, [sample], names, skip_target=0.5).layers
    plain = build_network(model, device, precision)
    if not grouped:  # the same mixture with its experts one by one
        ranges = model.calibration.ranges
        plain = MixtureNetwork(
            device, meta, model.weights, precision, ranges=ranges, group_experts=False
        )
    assert (plain.grouped is not None) == grouped
    want = plain.run(sample)
    dual = plain.with_dual_module(_with_threshold(littles, -np.inf))
    got = dual.run(sample)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.routing.indices, want.routing.indices)
    stats = dual.take_skip_stats()
    assert set(stats) == ({"experts.fc"} if grouped else {f"experts.{i}.fc" for i in range(4)})
    assert sum(s.images for s in stats.values()) == len(sample) * meta["k"]
    fitted = plain.with_dual_module(littles)
    fitted.run(sample)
    stats = fitted.take_skip_stats().values()
    computed = sum(s.computed for s in stats)
    assert 0 < computed < sum(s.images * s.outputs for s in stats)  # some skipped, not all
    # One expert's layer only: grouped, the others' little modules skip nothing.
    one = plain.with_dual_module({"experts.0.fc": _with_threshold(littles, np.inf)["experts.0.fc"]})
    got = one.run(sample)
    others = (got.routing.indices != 0).all(axis=1)
    np.testing.assert_array_equal(got.scores[others], want.scores[others])
    assert not np.array_equal(got.scores[~others], want.scores[~others])


@pytest.mark.parametrize(
    "inputs,outputs,rank", [(768, 1024, 32), (9216, 4096, 32), (160, 256, 16), (256, 256, 16),
                            (60, 100, 6), (30, 10, 4)]
)  # fmt: skip
def test_default_rank(inputs, outputs, rank):
    assert default_rank(inputs, outputs) == rank


def test_int8_layers_write_each_others_input_except_around_a_little_module(device, model, sample):
    """The integer pipeline: at int8, fc6 writes fc7's quantised input and fc7 fc8's
    (kernels/requant.py), within a step of dequantising and quantising again; a layer
    with a little module, whose estimate reads floats, breaks the chain on both sides."""
    net = build_network(model, device, "int8")
    names = {net.steps[i].name: net.steps[j].name for i, j in net.requant_links().items()}
    assert names == {"fc6": "fc7", "fc7": "fc8"}
    floats = Network(
        device,
        model.layers,
        model.input_shape,
        model.weights,
        precision="int8",
        ranges=model.calibration.ranges,
        integer_pipeline=False,
    )
    assert floats.requant_links() == {}
    got, want = net.run(sample).scores, floats.run(sample).scores
    assert nmse(got, want) < 1e-3  # often bit-identical: a step differs only at an edge
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    littles = {"fc7": _fitted(model, sample)["fc7"]}
    dual = net.with_dual_module(littles)
    assert dual.requant_links() == {}
    got = dual.run(sample).scores
    np.testing.assert_array_equal(got, floats.with_dual_module(littles).run(sample).scores)
