"""The mixture-of-experts network (experts/networks/mixture.py) on OpenCL against the
dense numpy reference (every expert on every image): grouped experts and experts run
one by one, routing, fp16 and mixed precisions, queued batches, batch sizes and k."""

from __future__ import annotations

import numpy as np
import pytest

from experts.layers import SpecError
from experts.model.architectures import random_weights
from experts.networks.calibrate import default_calibration
from experts.networks.mixture import MixtureNetwork
from experts.networks.reference import mixture_forward as reference_forward
from tests.helpers import SMALL

# The same mixture with 5x5 expert convolutions over few channels, which have no
# grouped kernel at float precisions (they run direct): its experts run one by one,
# each on its own images.
ONE_BY_ONE = {
    **SMALL,
    "name": "one-by-one",
    "expert": [{**SMALL["expert"][0], "kernel": 5, "padding": 2}, *SMALL["expert"][1:]],
}

# Stem features in a multiple of four channels, too many for the direct kernel: at int8
# on VNNI the experts' first pad pass gathers each image itself (Plan.gather),
# grouped or one by one, with no gather before.
FOURS = {
    **SMALL,
    "name": "fours",
    "stem": [{**SMALL["stem"][0], "out_channels": 20}, *SMALL["stem"][1:]],
}


@pytest.fixture(scope="module", params=["grouped", "one-by-one"])
def small(request, device):
    meta = SMALL if request.param == "grouped" else ONE_BY_ONE
    weights = random_weights(meta, seed=4)
    net = MixtureNetwork(device, meta, weights)
    assert (net.grouped is not None) == (request.param == "grouped")
    assert len(net.experts) == (0 if request.param == "grouped" else 5)
    return meta, weights, net


def images(n: int, shape=(3, 12, 12), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 16])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_sparse_matches_dense_reference(small, n, k):
    meta, weights, net = small
    x = images(n, seed=n * 10 + k)
    scores, routing = net.run(x, k)
    want, indices, gates = reference_forward(meta, weights, x, k)
    np.testing.assert_array_equal(routing.indices, indices)
    np.testing.assert_allclose(routing.gates, gates, rtol=1e-5)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)


def test_batch_sizes_coming_back_after_their_plans_were_dropped(small):
    """The gate reads the stem's output buffer in place: a batch size that comes back
    after the stem dropped its plan gets new stem buffers, and the gate must follow."""
    meta, weights, net = small
    kept = net.stem.max_plans
    net.stem.max_plans = 2  # fewer than the gate keeps: only the stem drops size 2
    try:
        for i, n in enumerate((2, 3, 4, 2)):
            x = images(n, seed=50 + i)  # new images: stale buffers would show
            scores, routing = net.run(x, 2)
            want, indices, _ = reference_forward(meta, weights, x, 2)
            np.testing.assert_array_equal(routing.indices, indices)
            np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)
    finally:
        net.stem.max_plans = kept


@pytest.mark.parametrize("meta", [SMALL, ONE_BY_ONE], ids=["grouped", "one-by-one"])
def test_a_larger_batch_replaces_the_shared_buffers_under_every_part(meta):
    """On a device of its own (nothing planned yet): a larger batch grows the parts'
    shared buffers, so the smaller batch's plans and routing launches are made again
    on the new ones, and every pass still matches the reference."""
    from kernels.runtime import Device

    weights = random_weights(meta, seed=4)
    net = MixtureNetwork(Device(), meta, weights)
    first = None
    for i, n in enumerate((2, 9, 2)):
        x = images(n, seed=70 + i)
        scores, routing = net.run(x, 2)
        want, indices, _ = reference_forward(meta, weights, x, 2)
        np.testing.assert_array_equal(routing.indices, indices)
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)
        if first is None:
            first = (net.stem.plan(2), dict(net._routes))
    assert net.stem.plan(2) is not first[0]
    if net.grouped is not None:
        assert net._routes[(2, 2)][1] is not first[1][(2, 2)][1]


@pytest.mark.parametrize("meta", [SMALL, ONE_BY_ONE], ids=["grouped", "one-by-one"])
def test_one_expert_gets_every_image(device, meta):
    """A gate biased towards one expert: results still match; run one by one, the
    other experts never run."""
    weights = random_weights(meta, seed=4)
    weights["gate.g.weight"] = np.zeros_like(weights["gate.g.weight"])
    weights["gate.g.bias"] = np.array([0, 0, 9, 0, 0], np.float32)
    net = MixtureNetwork(device, meta, weights)
    x = images(6)
    scores, routing = net.run(x, 1)
    assert (routing.indices == 2).all()
    assert routing.counts(5).tolist() == [0, 0, 6, 0, 0]
    if meta is ONE_BY_ONE:
        assert [bool(e._plans) for e in net.experts] == [False, False, True, False, False]
    np.testing.assert_allclose(scores, reference_forward(meta, weights, x, 1)[0], rtol=1e-4)


@pytest.mark.parametrize("n,k", [(3, 1), (16, 5), (40, 2)])
def test_grouped_experts_at_fp16(device, n, k):
    """Half weights in the grouped kernels: within fp16's rounding of the reference."""
    weights = random_weights(SMALL, seed=5)
    net = MixtureNetwork(device, SMALL, weights, precision="fp16")
    assert net.grouped is not None
    x = images(n, seed=n)
    scores, routing = net.run(x, k)
    want, indices, _ = reference_forward(SMALL, weights, x, k)
    np.testing.assert_array_equal(routing.indices, indices)
    np.testing.assert_allclose(scores, want, rtol=2e-2, atol=2e-3)


def test_mixed_experts_run_one_by_one(device):
    weights = random_weights(SMALL, seed=4)
    mixed = MixtureNetwork(device, SMALL, weights, layer_precisions={"experts.1.fc": "fp16"})
    assert mixed.grouped is None and len(mixed.experts) == 5
    x = images(7)
    np.testing.assert_allclose(
        mixed.run(x, 2)[0], reference_forward(SMALL, weights, x, 2)[0], rtol=2e-2, atol=2e-3
    )


@pytest.mark.parametrize("meta", [SMALL, ONE_BY_ONE, FOURS], ids=["3x3", "5x5", "gathering"])
@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_grouped_quantised_experts_answer_as_one_by_one(device, meta, precision):
    """Quantised experts run grouped (any convolution shape: the implicit GEMM), each
    with its own weight scales and input ranges: the same integer sums as each expert
    run on its own, so the same scores up to the float epilogue's last bit. With four
    channels a pixel at int8 on VNNI, the first pad pass gathers the routed images."""
    weights = random_weights(meta, seed=6)
    with pytest.warns(UserWarning, match="synthetic images"):
        ranges = default_calibration(meta, weights).ranges
    kw = {"precision": precision, "ranges": ranges}
    grouped = MixtureNetwork(device, meta, weights, **kw)
    alone = MixtureNetwork(device, meta, weights, group_experts=False, **kw)
    assert grouped.grouped is not None and alone.grouped is None
    for n, k in ((1, 1), (7, 2), (16, 5)):
        x = images(n, seed=70 + n)
        got, want = grouped.run(x, k), alone.run(x, k)
        np.testing.assert_array_equal(got.routing.indices, want.routing.indices)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-7)
    gathering = meta is FOURS and precision == "int8" and device.dot4
    plans = [
        *grouped.grouped._plans.values(),
        *(p for e in alone.experts for p in e._plans.values()),
    ]
    assert all((p.gather is not None) == gathering for p in plans)


def test_batches_queued_back_to_back_keep_their_own_outputs(small):
    """`submit` queues a batch and returns: batches submitted on the same buffers (one
    batch size and k) and collected out of order each give what `run` gives, as the
    server's batcher queues them (two in flight)."""
    _, _, net = small
    xs = [images(4, seed=90 + i) for i in range(3)]
    expected = [net.run(x, 2) for x in xs]
    waits = [net.submit(x, 2) for x in xs]
    for i in (2, 0, 1):
        got = waits[i]()
        np.testing.assert_array_equal(got.scores, expected[i].scores)
        np.testing.assert_array_equal(got.routing.indices, expected[i].routing.indices)


def test_every_batch_size_runs_unpadded(small):
    """A padding image would be routed to experts: a mixture runs every batch size."""
    _, _, net = small
    assert net.batch_sizes(4) == [1, 2, 3, 4]


def test_default_k_and_k_range(small):
    _, _, net = small
    x = images(3)
    _, routing = net.run(x)
    assert routing.indices.shape == (3, 2)  # the model's own k
    for bad in (0, 6, -1):
        with pytest.raises(SpecError, match="between 1 and 5"):
            net.run(x, bad)
