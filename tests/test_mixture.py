"""The mixture of experts: sparse execution on OpenCL against the dense numpy
reference (every expert on every image), routing, and the model.json checks."""

from __future__ import annotations

import numpy as np
import pytest

from experts.model.architectures import alexnet_moe, fashion_moe, random_weights
from experts.layers import SpecError
from experts.model.mixture import mixture_params, mixture_spec
from experts.model.model import ModelError, validate
from experts.networks.mixture import MixtureNetwork
from experts.networks.reference import mixture_forward as reference_forward
from experts.networks.reference import route

SMALL = {
    "format": 1,
    "name": "small-moe",
    "kind": "mixture",
    "input": {"shape": [3, 12, 12], "mean": [0.5] * 3, "std": [0.5] * 3},
    "stem": [
        {"name": "c1", "op": "conv", "out_channels": 6, "kernel": 3, "relu": True},
        {"name": "p1", "op": "maxpool", "kernel": 2, "stride": 2},
    ],
    "gate": [{"name": "gf", "op": "flatten"}, {"name": "g", "op": "linear", "out_features": 5}],
    "expert": [
        {"name": "c2", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "relu": True},
        {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 7, "relu": True},
    ],
    "experts": 5,
    "k": 2,
    "head": [{"name": "out", "op": "linear", "out_features": 3}, {"name": "sm", "op": "softmax"}],
}


# The same mixture with 5x5 expert convolutions over few channels, which have no
# grouped kernel (they run direct): its experts run one by one, each on its own images.
ONE_BY_ONE = {
    **SMALL,
    "name": "one-by-one",
    "expert": [{**SMALL["expert"][0], "kernel": 5, "padding": 2}, *SMALL["expert"][1:]],
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


def test_quantised_or_mixed_experts_run_one_by_one(device):
    weights = random_weights(SMALL, seed=4)
    mixed = MixtureNetwork(device, SMALL, weights, layer_precisions={"experts.1.fc": "fp16"})
    assert mixed.grouped is None and len(mixed.experts) == 5
    x = images(7)
    np.testing.assert_allclose(
        mixed.run(x, 2)[0], reference_forward(SMALL, weights, x, 2)[0], rtol=2e-2, atol=2e-3
    )


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


def test_route_ties_and_renormalisation():
    logits = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    indices, gates = route(logits, 2)
    assert indices.tolist() == [[1, 2], [0, 1]]  # ties go to the lower index
    np.testing.assert_allclose(gates, [[0.5, 0.5], [0.5, 0.5]])
    indices, gates = route(np.array([[0.0, np.log(3.0)]], np.float32), 2)
    np.testing.assert_allclose(gates, [[0.75, 0.25]], rtol=1e-6)
    assert indices.tolist() == [[1, 0]]


@pytest.mark.parametrize("arch", [fashion_moe, alexnet_moe])
def test_shipped_geometries_check(arch):
    meta = arch()
    spec = mixture_spec(meta)
    assert spec.k == 1
    params = mixture_params(meta)
    assert sum(key.startswith("experts.") for key in params) == spec.experts * sum(
        key.startswith("experts.0.") for key in params
    )


def test_alexnet_moe_is_tschopps_geometry():
    spec = mixture_spec(alexnet_moe())
    assert spec.experts == 16 and spec.stem[0].out_channels == 48
    widths = [
        getattr(layer, "out_channels", getattr(layer, "out_features", None))
        for layer in spec.expert
        if layer.weighted
    ]
    assert widths == [64, 96, 96, 64, 1024, 2048]
    assert spec.num_classes == 1000


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m.update(experts=0), "experts must be a positive integer"),
        (lambda m: m.update(k=6), "between 1 and 5"),
        (lambda m: m.update(k=0), "between 1 and 5"),
        (lambda m: m["gate"][-1].update(out_features=4), "gate: must end in 5 logits"),
        (lambda m: m.update(expert=m["expert"][:1]), "expert: must end in a flat feature vector"),
        (lambda m: m["head"][0].update(op="conv"), "head"),
        (lambda m: m.pop("stem"), "missing 'stem'"),
    ],
)
def test_bad_mixtures_name_the_part(change, needle):
    import copy

    meta = copy.deepcopy(SMALL)
    change(meta)
    with pytest.raises((SpecError, ModelError, KeyError), match=needle):
        validate(meta, random_weights(SMALL, seed=0), "model 'small-moe'")


def test_missing_expert_weights_named():
    weights = random_weights(SMALL, seed=0)
    del weights["experts.3.c2.weight"]
    with pytest.raises(ModelError, match=r"experts\.3\.c2\.weight"):
        validate(SMALL, weights, "model 'small-moe'")
