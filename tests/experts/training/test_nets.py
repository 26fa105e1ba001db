"""The torch twins of our specs (experts/training/nets.py) against the numpy references:
SpecNet and MixtureNet forward passes, routing (deterministic, ties low, experts run
only on their images), noisy gating, the load-balancing loss, and weight export and
loading."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.model.architectures import fashion_alexnet, fashion_moe  # noqa: E402
from experts.model.mixture import mixture_params  # noqa: E402
from experts.model.model import validate  # noqa: E402
from experts.model.spec import parse_layers  # noqa: E402
from experts.networks.reference import forward, route  # noqa: E402
from experts.networks.reference import mixture_forward as reference_forward  # noqa: E402
from experts.training.nets import (  # noqa: E402
    MixtureNet,
    SpecNet,
    balance_loss,
    build_model,
    export_weights,
    load_weights,
    torch_predictions,
)

EVERY_OP = [
    {"name": "c1", "op": "conv", "out_channels": 8, "kernel": 3, "padding": 1, "relu": True},
    {"name": "n1", "op": "lrn", "size": 3, "alpha": 0.01, "beta": 0.75, "k": 2.0},
    {"name": "p1", "op": "maxpool", "kernel": 3, "stride": 2, "ceil_mode": True},
    {
        "name": "c2",
        "op": "conv",
        "out_channels": 6,
        "kernel": [3, 5],
        "stride": [1, 2],
        "padding": [1, 2],
        "groups": 2,
    },
    {"name": "r2", "op": "relu"},
    {"name": "n2", "op": "lrn", "size": 4, "alpha": 0.05, "beta": 0.5, "k": 1.0},
    {
        "name": "p2",
        "op": "avgpool",
        "kernel": 3,
        "stride": 2,
        "padding": 1,
        "ceil_mode": True,
        "count_include_pad": False,
    },
    {"name": "p3", "op": "adaptive_avgpool", "output_size": [3, 2]},
    {"name": "flat", "op": "flatten"},
    {"name": "drop", "op": "dropout", "ratio": 0.3},
    {"name": "fc1", "op": "linear", "out_features": 12, "relu": True},
    {"name": "fc2", "op": "linear", "out_features": 5, "bias": False},
    {"name": "prob", "op": "softmax"},
]


def images(n: int, shape=(1, 28, 28), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def noisy_biases(model: torch.nn.Module, seed: int = 0) -> None:
    """Biases are zero at initialisation; make them random so the test sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def spread_routing(net: MixtureNet, x: np.ndarray) -> None:
    """Random gates send every image to the same expert (all stem features are
    positive, so one direction dominates); centring each expert's logit over the batch
    makes different images win for different experts."""
    gfc = net.gate.layers[-1]
    with torch.no_grad():
        torch.nn.init.normal_(gfc.weight, std=0.5)
        logits = net.gate(net.stem(torch.from_numpy(x)))
        gfc.bias -= logits.mean(dim=0)


# -- the torch twins against the numpy references -----------------------------------------


@pytest.mark.parametrize(
    "layers, shape",
    [(fashion_alexnet()["layers"], (1, 28, 28)), (EVERY_OP, (4, 17, 17))],
    ids=["fashion-alexnet", "every-op"],
)
def test_specnet_matches_numpy_reference(layers, shape):
    torch.manual_seed(0)
    net = SpecNet(parse_layers(layers), shape)
    noisy_biases(net)
    x = images(5, shape)
    want = forward(parse_layers(layers), export_weights(net), x)
    got = torch_predictions(net, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_specnet_logits_skip_the_final_softmax():
    net = SpecNet(parse_layers(EVERY_OP), (4, 17, 17)).eval()
    x = torch.from_numpy(images(3, (4, 17, 17)))
    with torch.no_grad():
        logits, probs = net(x, logits=True), net(x)
    torch.testing.assert_close(torch.softmax(logits, 1), probs)


@pytest.mark.parametrize("k", [1, 2])
def test_mixturenet_matches_numpy_reference(k):
    torch.manual_seed(1)
    meta = fashion_moe(experts=4, k=k)
    net = MixtureNet(meta)
    noisy_biases(net, seed=1)
    x = images(24, seed=k)
    spread_routing(net, x)
    weights = export_weights(net)
    want, want_indices, want_gates = reference_forward(meta, weights, x)
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    np.testing.assert_array_equal(out.indices.numpy(), want_indices)
    np.testing.assert_allclose(out.gates.numpy(), want_gates, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.scores.numpy(), want, rtol=1e-4, atol=1e-5)
    assert len(set(want_indices[:, 0].tolist())) > 1  # the test does exercise routing


def test_eval_routing_is_deterministic_and_ties_go_low():
    net = MixtureNet(fashion_moe()).eval()
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    indices, gates = net.route(logits, torch.softmax(logits, 1))
    want_indices, want_gates = route(logits.numpy(), 1)
    assert indices.tolist() == want_indices.tolist() == [[1], [0]]
    np.testing.assert_allclose(gates.numpy(), want_gates)


def test_experts_run_only_on_their_images():
    torch.manual_seed(2)
    net = MixtureNet(fashion_moe(experts=4, k=2)).eval()
    seen = [0] * 4
    for i, expert in enumerate(net.experts):
        expert.register_forward_hook(lambda _m, args, _o, i=i: seen.__setitem__(i, len(args[0])))
    with torch.no_grad():
        out = net(torch.from_numpy(images(10)))
    counts = np.bincount(out.indices.numpy().ravel(), minlength=4)
    assert seen == counts.tolist() and sum(seen) == 20


# -- noisy gating and the load-balancing loss ---------------------------------------------


def test_noisy_gating_only_in_training_mode():
    torch.manual_seed(3)
    net = MixtureNet(fashion_moe())
    with torch.no_grad():
        net.noise.bias.fill_(5.0)  # noise std softplus(5) ~ 5: routing mostly random
    x = torch.from_numpy(images(64))
    net.eval()
    with torch.no_grad():
        first, second = net(x).indices, net(x).indices
        clean = net.route(net.gate(net.stem(x)), None)[0]
    assert torch.equal(first, second) and torch.equal(first, clean)
    net.train()
    with torch.no_grad():
        noisy = [net(x).indices for _ in range(3)]
    assert not torch.equal(noisy[0], noisy[1]) or not torch.equal(noisy[1], noisy[2])
    assert not all(torch.equal(n, clean) for n in noisy)
    net.noisy = False  # the trainer's last epochs: training mode, inference routing
    with torch.no_grad():
        assert torch.equal(net(x).indices, clean)


def test_route_on_routes_by_the_other_images():
    """With `route_on` the gate (and its noise) sees those images' stem, the experts
    and head still see `x`: the trainer routes by the un-augmented original."""
    torch.manual_seed(6)
    net = MixtureNet(fashion_moe())
    x, original = torch.from_numpy(images(32, seed=1)), torch.from_numpy(images(32, seed=2))
    spread_routing(net, original.numpy())
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # training mode, so that the scores can be compared
    with torch.no_grad():
        want = net.eval().route(net.gate(net.stem(original)), None)[0]
        net.train().noisy = False
        by_original = net(x, route_on=original)
        assert torch.equal(by_original.indices, want)
        assert not torch.equal(net(x).indices, want)  # x alone routes differently
        stem = net.stem(x)
        scores = net.head(net.combine(stem, by_original.indices, by_original.gates))
    torch.testing.assert_close(by_original.scores, scores)


def test_balance_loss_is_minimal_when_uniform():
    e, n = 4, 64
    uniform_probs = torch.full((n, e), 1 / e)
    round_robin = (torch.arange(n) % e)[:, None]
    assert float(balance_loss(uniform_probs, round_robin, e)) == pytest.approx(1.0)
    one_hot = torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), e).float()
    all_to_zero = torch.zeros((n, 1), dtype=torch.long)
    assert float(balance_loss(one_hot, all_to_zero, e)) == pytest.approx(e)
    skewed = torch.softmax(torch.tensor([[2.0, 0.0, 0.0, 0.0]]).repeat(n, 1), 1)
    assert 1.0 < float(balance_loss(skewed, all_to_zero, e)) < e


def test_balance_loss_and_task_loss_reach_the_gate():
    """Top-1's renormalised weight is the constant 1; the gate still gets gradients
    from the task loss (straight-through) and from the balance loss."""
    torch.manual_seed(4)
    net = MixtureNet(fashion_moe(k=1)).train()
    x = torch.from_numpy(images(16))
    gate_weight = net.gate.layers[-1].weight
    out = net(x)
    assert torch.all(out.gates.detach() == 1.0)  # the forward value is unchanged
    (grad,) = torch.autograd.grad(out.balance_loss, gate_weight)
    assert grad.abs().sum() > 0
    out = net(x)
    loss = torch.nn.functional.cross_entropy(out.scores, torch.arange(16) % 10)
    (grad,) = torch.autograd.grad(loss, gate_weight)
    assert grad.abs().sum() > 0


# -- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("meta", [fashion_alexnet(), fashion_moe()], ids=lambda m: m["name"])
def test_export_names_and_shapes_validate(meta):
    torch.manual_seed(5)
    net = build_model(meta)
    weights = export_weights(net)
    assert all(w.dtype == np.float32 and w.flags.c_contiguous for w in weights.values())
    validate(meta, weights, "trained")  # raises on a missing, extra or misshapen tensor
    if meta.get("kind") == "mixture":
        assert set(weights) == set(mixture_params(meta))  # the noise layer is not exported
        assert "experts.3.fc7.weight" in weights and "gate.gfc.bias" in weights


def test_load_weights_round_trip():
    from experts.model.architectures import random_weights

    meta = fashion_moe()
    weights = random_weights(meta, seed=6)
    net = MixtureNet(meta).to(memory_format=torch.channels_last)
    load_weights(net, weights)
    for key, value in export_weights(net).items():
        np.testing.assert_array_equal(value, weights[key])
    with pytest.raises(KeyError, match="missing"):
        load_weights(net, {})
