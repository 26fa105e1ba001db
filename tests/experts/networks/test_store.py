"""One weight store for int16 and int8 (experts/networks/build.py's store_for, kernels/
ops/store.py) on whole networks, plain and mixture: int16 exactly as without a store,
int8 exactly as a store of its own would give it, every weight counted once."""

from __future__ import annotations

import numpy as np
import pytest

from experts.model.repository import Repository
from experts.networks.build import build_network, storage_note, store_for


def test_a_store_only_where_int16_and_int8_are_both_held():
    assert store_for(["fp32", "int16", "int8"]) is not None
    assert store_for(["int8"]) is None and store_for(["fp32", "int16"]) is None


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_networks_share_one_store(device, shared_repo, rng, name):
    model = Repository(shared_repo).load(name)
    x = rng.random((5, *model.input_shape), np.float32)
    store = store_for(["int16", "int8"])
    int16 = build_network(model, device, "int16", store=store)
    int8 = build_network(model, device, "int8", store=store)
    alone16 = build_network(model, device, "int16")
    np.testing.assert_array_equal(int16.run(x).scores, alone16.run(x).scores)
    # int8 read from the shared planes = int8 from planes of its own (the same mode).
    own = build_network(model, device, "int8", store=store_for(["int16", "int8"]))
    np.testing.assert_array_equal(int8.run(x).scores, own.run(x).scores)
    assert int8.weight_bytes < 0.1 * int16.weight_bytes  # scales and biases only
    # The planes are counted under int16, whichever precision uploaded them.
    late = store_for(["int16", "int8"])
    build_network(model, device, "int8", store=late)
    assert build_network(model, device, "int16", store=late).weight_bytes == int16.weight_bytes
    assert own.weight_bytes == int8.weight_bytes
    # A store holds the grouped experts' convolutions in DOT4's layout where int8 runs
    # it (channels padded to four); elsewhere int16's bytes are its own.
    padded = name == "tiny-moe" and device.dot4
    assert (int16.weight_bytes > alone16.weight_bytes) == padded
    assert int16.weight_bytes <= 1.2 * alone16.weight_bytes
    assert storage_note("int8", int8, store) == {"weights": "int16's high byte plane"}
    assert storage_note("int16", int16, store) == storage_note("int8", int8, None) == {}
    # The mode differs from int8's own weights (another rounding), slightly.
    plain8 = build_network(model, device, "int8").run(x).scores
    assert not np.array_equal(plain8, int8.run(x).scores)
    np.testing.assert_allclose(plain8, int8.run(x).scores, atol=0.05)
