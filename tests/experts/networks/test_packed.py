"""Grouped-precision networks (int8g, int16g: kernels/bitgroups.py) give exactly the
logits of int8 and int16 with the same calibration, on alexnet (seeded weights) and on
the tiny plain and mixture models, and report what their weights take."""

from __future__ import annotations

import numpy as np
import pytest

from experts.model.architectures import alexnet, random_weights
from experts.model.model import Model, validate
from experts.model.repository import Repository
from experts.networks.build import bits_per_weight, build_network, storage_note
from experts.networks.calibrate import calibrate


@pytest.fixture(scope="module")
def alexnet_model():
    meta = alexnet()
    weights = random_weights(meta, seed=7)
    model = Model(validate(meta, weights, "alexnet"), weights)
    x = np.random.default_rng(2).standard_normal((2, *model.input_shape), np.float32)
    model.calibration = calibrate(meta, weights, [x])
    return model, x


@pytest.mark.parametrize("packed,base", [("int8g", "int8"), ("int16g", "int16")])
def test_alexnet_logits_are_those_of_the_plain_precision(device, alexnet_model, packed, base):
    model, x = alexnet_model
    plain, grouped = build_network(model, device, base), build_network(model, device, packed)
    np.testing.assert_array_equal(grouped.run(x).scores, plain.run(x).scores)
    bits = bits_per_weight(grouped)
    full = 8 if base == "int8" else 16
    # He-normal fully connected weights: a group of 16 rarely needs the row's full width.
    assert all(bits[f"fc{i}"] < full for i in (6, 7, 8)), bits
    assert bits["conv1"] == full and bits["model"] < full
    assert grouped.weight_bytes < plain.weight_bytes
    assert storage_note(packed, grouped, None) == {"bits_per_weight": bits}


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("packed,base", [("int8g", "int8"), ("int16g", "int16")])
def test_small_models_too(device, shared_repo, name, packed, base):
    model = Repository(shared_repo).load(name)
    x = np.random.default_rng(4).random((5, *model.input_shape), np.float32)
    plain, grouped = build_network(model, device, base), build_network(model, device, packed)
    np.testing.assert_array_equal(grouped.run(x).scores, plain.run(x).scores)
    assert set(bits_per_weight(grouped)) == {*grouped.layer_bits(), "model"}
