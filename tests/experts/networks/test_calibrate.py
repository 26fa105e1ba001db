"""Measuring activation ranges (experts/networks/calibrate.py): min-max and percentile
ranges, a mixture's experts calibrated on the images routed to them, and the synthetic
ranges an uncalibrated model falls back on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from experts.model.architectures import random_weights
from experts.model.calibration import weighted_layers
from experts.model.mixture import mixture_spec, part_weights
from experts.model.model import Model, validate
from experts.model.spec import parse_layers
from experts.networks.build import build_network
from experts.networks.calibrate import calibrate, synthetic_images
from experts.networks.reference import forward, route


def test_minmax_ranges_are_the_inputs_extremes(tiny_model, sample):
    meta, weights = tiny_model
    cal = calibrate(meta, weights, [sample[:5], sample[5:]])
    assert cal.samples == 12 and set(cal.ranges) == {"conv1", "fc"}
    assert cal.ranges["conv1"] == (float(sample.min()), float(sample.max()))
    seen = {}
    forward(parse_layers(meta["layers"]), weights, sample, lambda n, x: seen.setdefault(n, x))
    assert cal.ranges["fc"] == (float(seen["fc"].min()), float(seen["fc"].max()))


def test_percentile_clips_outliers(tiny_model, rng):
    meta, weights = tiny_model
    sample = rng.standard_normal((64, 3, 16, 16), np.float32)
    sample[0, 0, 0, 0] = 50.0  # one wild pixel in 49,152
    mm = calibrate(meta, weights, [sample]).ranges["conv1"]
    pc = calibrate(meta, weights, [sample], method="percentile").ranges["conv1"]
    assert mm[1] == 50.0 and pc[1] < 5.0 and pc[0] >= mm[0]


def test_mixture_experts_are_calibrated_on_their_own_images(rng, sample, tiny_moe_meta):
    meta, weights = tiny_moe_meta, random_weights(tiny_moe_meta, seed=2)
    cal = calibrate(meta, weights, [sample])
    assert set(cal.ranges) == set(weighted_layers(meta))
    spec = mixture_spec(meta)
    stem = forward(spec.stem, part_weights(weights, "stem"), sample).reshape(
        len(sample), *spec.stem_shape
    )
    indices, _ = route(forward(spec.gate, part_weights(weights, "gate"), stem), spec.k)
    for e in range(spec.experts):
        rows = np.nonzero((indices == e).any(axis=1))[0]
        if len(rows):
            mine = stem[rows]
            assert cal.ranges[f"experts.{e}.c2"] == (float(mine.min()), float(mine.max()))


def test_no_sample_reaching_an_expert_borrows_its_peers_range(sample, tiny_moe_meta):
    meta, weights = tiny_moe_meta, random_weights(tiny_moe_meta, seed=2)
    cal = calibrate(meta, weights, [sample[:1]])  # one image: k=2 of 4 experts see it
    assert set(cal.ranges) == set(weighted_layers(meta))


def test_uncalibrated_model_warns_and_uses_synthetic_ranges(device, tiny_model):
    meta, weights = tiny_model
    model = Model(validate(meta, weights, "tiny"), weights)
    with pytest.warns(UserWarning, match="has no calibration.json"):
        build_network(model, device, "int8")
    assert model.calibration.source == "synthetic (default)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # computed once per model
        build_network(model, device, "int16")
        build_network(Model(model.meta, weights), device, "fp32")  # floats need no ranges
    a, b = synthetic_images(meta, 4), synthetic_images(meta, 4)
    np.testing.assert_array_equal(a, b)  # deterministic
