"""Quantised networks end to end on small models (experts/networks/network.py and
build.py): a per-layer precision override, int8 against the quantised numpy twins
layer by layer, and a quantised layer without a calibrated range refused."""

from __future__ import annotations

import numpy as np
import pytest

from experts.layers import SpecError
from experts.model.model import Model, validate
from experts.model.spec import parse_layers
from experts.networks.build import build_network
from experts.networks.calibrate import calibrate
from experts.networks.network import Network


def test_per_layer_override_runs_that_layer_at_its_precision(device, tiny_model, sample):
    meta, weights = tiny_model
    model = Model(validate(meta, weights, "tiny"), weights)
    model.calibration = calibrate(meta, weights, [sample])
    net = build_network(model, device, "int8", {"fc": "fp32"})
    kinds = {s.name: s.op.precision.name for s in net.steps if hasattr(s.op, "precision")}
    assert kinds == {"conv1": "int8", "fc": "fp32"}
    fp32 = build_network(model, device, "fp32").run(sample).scores
    mixed = net.run(sample).scores
    err = np.mean((mixed - fp32) ** 2) / np.mean(fp32**2)
    assert 0 < err < 1e-3  # quantised conv1 (not exact), close


def test_quantized_network_matches_the_twins_layer_by_layer(device, tiny_model, sample):
    """Run conv1 -> pool -> fc at int8 and check the whole against the quantised twins
    (kernels/reference.py), which share the quantisation arithmetic."""
    from kernels import reference as ref
    from kernels.precision import PRECISIONS

    meta, weights = tiny_model
    cal = calibrate(meta, weights, [sample])
    layers = parse_layers(meta["layers"])
    net = Network(
        device, layers, meta["input"]["shape"], weights, precision="int8", ranges=cal.ranges
    )
    p = PRECISIONS["int8"]
    w1 = weights["conv1.weight"]
    c1 = p.prepare(w1.reshape(len(w1), -1), cal.ranges["conv1"])
    h = ref.conv2d_quantized(
        sample,
        c1.weights.reshape(w1.shape),
        c1.scale,
        c1.qinv,
        c1.qzero,
        8,
        weights["conv1.bias"],
        1,
        1,
        relu=True,
    )
    h = ref.maxpool2d(h, 2, 2, 0, False).reshape(len(sample), -1)
    fc = p.prepare(weights["fc.weight"], cal.ranges["fc"])
    want = ref.linear_quantized(h, fc.weights, fc.scale, fc.qinv, fc.qzero, 8, weights["fc.bias"])
    np.testing.assert_allclose(
        net.run(sample).scores, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()
    )


def test_quantized_layer_without_range_is_refused(device, tiny_model):
    meta, weights = tiny_model
    with pytest.raises(SpecError, match="conv1: int8 needs the calibrated range"):
        Network(
            device, parse_layers(meta["layers"]), meta["input"]["shape"], weights, precision="int8"
        )
