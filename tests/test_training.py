"""Training with PyTorch (the `train` extra): the torch twins of our specs against the
numpy references, the mixture's routing and load-balancing loss, export, and a tiny
end-to-end run into a temporary repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.model.architectures import FASHION_INPUT, fashion_alexnet, fashion_moe  # noqa: E402
from experts.data.fashion_mnist import DEFAULT_DIR, to_model_input  # noqa: E402
from experts.layers.lrn import Lrn  # noqa: E402
from experts.model.mixture import mixture_params  # noqa: E402
from experts.model.model import validate  # noqa: E402
from experts.model.repository import Repository  # noqa: E402
from experts.model.spec import parse_layers  # noqa: E402
from experts.networks.reference import forward, route  # noqa: E402
from experts.networks.reference import mixture_forward as reference_forward  # noqa: E402
from experts.training.report import routing_warning  # noqa: E402
from experts.training.train import TrainingError, native_bf16, train  # noqa: E402
from experts.training.loop import augment, normalise  # noqa: E402
from experts.training.nets import (  # noqa: E402
    MixtureNet,
    SpecNet,
    balance_loss,
    build_model,
    export_weights,
    load_weights,
    torch_predictions,
)
from service.commands.main import main  # noqa: E402

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
HAVE_DATA = (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="dataset-fashion-mnist is not installed")


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


def test_lrn_matches_torch_for_odd_sizes():
    """The banded-convolution LRN is torch's formula (which our engine shares for odd
    sizes; for even ones the numpy reference above is the oracle)."""
    x = torch.randn(3, 32, 13, 13) * 3
    for size in (1, 3, 5):
        want = torch.nn.LocalResponseNorm(size, 1e-3, 0.75, 2.0)(x)
        ours = Lrn("n", size, 1e-3, 0.75, 2.0).torch_module((32, 13, 13))
        torch.testing.assert_close(ours(x), want)


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


# -- the training loop --------------------------------------------------------------------


def test_augment_crops_and_flips_within_padding():
    gen = torch.Generator().manual_seed(0)
    base = torch.from_numpy(np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8))
    out = augment(base.repeat(200, 1, 1), gen)
    assert out.shape == (200, 28, 28) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(base, (2, 2, 2, 2))
    variants = {
        (dy, dx, flip): (
            padded[dy : dy + 28, dx : dx + 28].flip(1)
            if flip
            else padded[dy : dy + 28, dx : dx + 28]
        )
        for dy in range(5)
        for dx in range(5)
        for flip in (False, True)
    }
    hits = {next(key for key, v in variants.items() if torch.equal(v, img)) for img in out}
    assert len(hits) > 30  # both flips and many offsets occur


def test_normalise_matches_to_model_input():
    raw = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    x = normalise(torch.from_numpy(raw), FASHION_INPUT["mean"][0], FASHION_INPUT["std"][0])
    np.testing.assert_array_equal(x.numpy(), to_model_input(raw, FASHION_INPUT))


def test_bad_options():
    with pytest.raises(TrainingError, match="unknown architecture"):
        train("alexnet", epochs=1)
    with pytest.raises(TrainingError, match=">= 1"):
        train("fashion-moe", epochs=0)
    with pytest.raises(TrainingError, match="dropout"):
        train("fashion-moe", epochs=1, dropout=1.0)
    with pytest.raises(TrainingError, match="clean fraction"):
        train("fashion-moe", epochs=1, clean_fraction=1.5)
    with pytest.raises(TrainingError, match="unknown torch device"):
        train("fashion-moe", epochs=1, device="gpu7")
    with pytest.raises(TrainingError, match="autocast must be one of"):
        train("fashion-moe", epochs=1, autocast="fp8")
    with pytest.raises(TrainingError, match="distill must be in"):
        train("fashion-moe", epochs=1, teacher="fashion-alexnet", distill=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA"):
            train("fashion-moe", epochs=1, device="cuda")


def test_a_collapsed_gate_is_flagged():
    balanced = {"routing": {"share": [0.25] * 4, "max_over_fair": 1.09}}
    collapsed = {"routing": {"share": [1.0, 0, 0, 0], "max_over_fair": 4.0}}
    assert routing_warning(balanced) is None and routing_warning({}) is None
    assert "4.0x" in routing_warning(collapsed) and "collapsed" in routing_warning(collapsed)


def test_without_torch_the_command_says_what_to_install():
    """Without torch everything imports, and `train` fails in one line with the hint."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from service.commands.main import main\n"
        "sys.exit(main(['train', '--arch', 'fashion-moe', '--limit', '1']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert "pip install 'moe-alexnet[train]'" in result.stderr


@needs_data
@pytest.mark.parametrize("arch", ["fashion-moe", "fashion-alexnet"])
def test_tiny_training_run_saves_a_loadable_model(arch, tmp_path):
    summary = train(
        arch,
        epochs=1,
        limit=512,
        out_dir=tmp_path,
        progress=False,
        command=["moe-alexnet", "train"],
    )
    model = Repository(tmp_path).load(arch)
    assert model.name == arch and model.meta["input"]["mean"] == [0.2860]
    record = json.loads((tmp_path / arch / "training.json").read_text())
    assert record["command"] == "moe-alexnet train" and record["epochs"] == 1
    assert record["test_images"] == 512 and 0.0 <= record["test_accuracy"] <= 1.0
    assert record["parity"]["same_top1"] and record["parity"]["max_abs_diff"] < 1e-3
    assert summary["path"] == str(tmp_path / arch)
    assert model.calibration is not None and model.calibration.samples == 512  # int8-ready
    assert record["dropout"] == (0.25 if arch == "fashion-moe" else None)  # ARCH_DEFAULTS
    # ARCH_DEFAULTS: fashion-alexnet "auto", recorded as what it resolved to here
    bf16 = arch == "fashion-alexnet" and native_bf16("cpu")
    assert record["autocast"] == ("bf16" if bf16 else "off")
    if arch == "fashion-moe":
        routing = record["routing"]
        assert sum(routing["counts"]) == 512 and len(routing["share"]) == 4
        assert record["parity"]["same_routing"] and record["route_clean"]  # ARCH_DEFAULTS
        assert "balance_loss" in record["history"][0]
        assert record["history"][-1]["test_share"] == routing["share"]  # the last epoch's


@needs_data
def test_bf16_autocast_trains_and_exports_float32(tmp_path):
    """bfloat16 forward passes still export float32 weights that the engine runs as
    PyTorch does (the parity check runs in float32)."""
    record = train(
        "fashion-alexnet", epochs=1, limit=256, out_dir=tmp_path, progress=False, autocast="bf16"
    )
    assert record["autocast"] == "bf16" and record["parity"]["same_top1"]
    weights = Repository(tmp_path).load("fashion-alexnet").weights
    assert all(w.dtype == np.float32 for w in weights.values())


@needs_data
def test_distillation_from_a_repository_teacher(tmp_path):
    teachers = tmp_path / "teachers"
    train("fashion-alexnet", epochs=1, limit=256, out_dir=teachers, progress=False)
    record = train(
        "fashion-moe",
        epochs=1,
        limit=256,
        out_dir=tmp_path / "out",
        progress=False,
        teacher="fashion-alexnet",
        teacher_dir=teachers,
        distill=0.7,
    )
    want = json.loads((teachers / "fashion-alexnet" / "training.json").read_text())
    assert record["teacher"] == "fashion-alexnet" and record["distill"] == 0.7
    assert record["teacher_test_accuracy"] == want["test_accuracy"]  # same 256 test images
    assert record["parity"]["same_routing"]
    with pytest.raises(TrainingError, match="teacher 'nope'"):
        train(
            "fashion-moe",
            epochs=1,
            limit=64,
            out_dir=tmp_path / "x",
            progress=False,
            teacher="nope",
            teacher_dir=teachers,
        )
    grey = json.loads((teachers / "fashion-alexnet" / "model.json").read_text())
    grey["input"]["mean"] = [0.5]
    (teachers / "fashion-alexnet" / "model.json").write_text(json.dumps(grey))
    with pytest.raises(TrainingError, match="takes other inputs"):
        train(
            "fashion-moe",
            epochs=1,
            limit=64,
            out_dir=tmp_path / "x",
            progress=False,
            teacher="fashion-alexnet",
            teacher_dir=teachers,
        )


def test_distillation_loss():
    """distill 0 is the task loss alone; a student that already scores as its teacher
    adds nothing; one that does not adds a positive KL term."""
    from types import SimpleNamespace

    from experts.training.loop import Trainer

    scores = torch.randn(8, 10)
    task = torch.tensor(1.5)
    for a in (0.0, 0.5):
        fake = SimpleNamespace(config=SimpleNamespace(distill=a, temperature=4.0))
        same = Trainer._distil(fake, task, scores, scores.clone())
        assert float(same) == pytest.approx((1 - a) * 1.5, abs=1e-6)
        other = Trainer._distil(fake, task, scores, torch.randn(8, 10))
        assert float(other) > float(same) if a else float(other) == float(same)


@needs_data
def test_same_seed_same_weights(tmp_path):
    def run(folder: str) -> dict[str, np.ndarray]:
        train("fashion-moe", epochs=1, limit=256, seed=7, out_dir=tmp_path / folder, progress=False)
        return Repository(tmp_path / folder).load("fashion-moe").weights

    first, second = run("a"), run("b")
    assert all(np.array_equal(first[key], second[key]) for key in first)


@needs_data
def test_cli_train(tmp_path, capsys):
    code = main(
        [
            "train",
            "--arch",
            "fashion-moe",
            "--epochs",
            "1",
            "--limit",
            "256",
            "--out",
            str(tmp_path),
            "--seed",
            "3",
            "--batch-size",
            "64",
            "--lr",
            "0.001",
            "--dropout",
            "0.1",
            "--clean-fraction",
            "1",
            "--no-route-clean",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--autocast",
            "off",
        ]
    )
    assert code == 0
    assert Repository(tmp_path).names() == ["fashion-moe"]
    record = json.loads((tmp_path / "fashion-moe" / "training.json").read_text())
    assert record["seed"] == 3 and record["batch_size"] == 64
    assert record["lr"] == 0.001 and record["dropout"] == 0.1
    assert record["clean_fraction"] == 1.0 and record["history"][0]["gate_noise"] is False
    assert record["route_clean"] is False and record["threads"] == 1
    assert record["device"] == "cpu" and "gpu" not in record and record["autocast"] == "off"
    assert "test accuracy" in capsys.readouterr().out


def test_cli_train_without_dataset(tmp_path, capsys):
    code = main(
        [
            "train",
            "--arch",
            "fashion-moe",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err


@needs_data
@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch has no CUDA GPU")
def test_training_on_a_gpu_exports_what_the_engine_runs(tmp_path):
    record = train(
        "fashion-moe", epochs=1, limit=256, out_dir=tmp_path, progress=False, device="cuda"
    )
    assert record["device"] == "cuda" and record["gpu"]
    assert record["parity"]["same_top1"] and record["parity"]["same_routing"]
    assert Repository(tmp_path).load("fashion-moe").calibration is not None
