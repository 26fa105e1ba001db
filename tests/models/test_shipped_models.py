"""The trained models in models/ on the 10,000 Fashion-MNIST test images: accuracy,
routing balance, parity with PyTorch, and the accuracy cost of each precision with
the shipped calibration.json. Needs Debian's dataset-fashion-mnist (and torch, the
training extra, for parity); CI installs both."""

from __future__ import annotations

import numpy as np
import pytest

from experts.data.fashion_mnist import DatasetError, load_fashion_mnist, to_model_input
from experts.model.repository import Repository, default_root
from experts.networks.build import build_network, store_for

# Issue targets: top-1 at fp32, and the most a precision may lose against fp32.
MIN_TOP1 = {"fashion-alexnet": 0.930, "fashion-moe": 0.925}
MAX_LOSS = {"fp16": 0.001, "int16": 0.001, "int8": 0.01}


@pytest.fixture(scope="module")
def test_set():
    try:
        return load_fashion_mnist("test")
    except DatasetError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")


def shipped(name: str):
    repo = Repository(default_root())
    if name not in repo.names():
        pytest.skip(f"{name} is not in {repo.root}")
    return repo.load(name)


def top1(network, x: np.ndarray, batch: int = 250) -> tuple[np.ndarray, np.ndarray | None]:
    preds, experts = [], []
    for start in range(0, len(x), batch):
        scores, routing = network.run(x[start : start + batch])
        preds.append(scores.argmax(axis=1))
        if routing is not None:
            experts.append(routing.indices[:, 0])
    return np.concatenate(preds), (np.concatenate(experts) if experts else None)


@pytest.fixture(scope="module")
def fp32_runs(device, test_set):
    """Per shipped model: (model, inputs, labels, top-1, first experts) at fp32."""
    images, labels = test_set
    runs = {}
    for name in sorted(MIN_TOP1):
        model = shipped(name)
        x = to_model_input(images, model.meta["input"])
        pred, experts = top1(build_network(model, device, "fp32"), x)
        runs[name] = (model, x, labels, pred, experts)
    return runs


@pytest.mark.parametrize("name", sorted(MIN_TOP1))
def test_accuracy(fp32_runs, name):
    _, _, labels, pred, _ = fp32_runs[name]
    accuracy = (pred == labels).mean()
    assert accuracy >= MIN_TOP1[name], accuracy


def test_mixture_is_balanced(fp32_runs):
    model, _, _, _, experts = fp32_runs["fashion-moe"]
    share = np.bincount(experts, minlength=model.mixture.experts) / len(experts)
    assert share.max() <= 3 / model.mixture.experts, share  # 3x the fair share at most


def test_mixture_is_within_a_point_of_its_baseline(fp32_runs):
    _, _, labels, pred, _ = fp32_runs["fashion-moe"]
    baseline = fp32_runs["fashion-alexnet"][3]
    assert (baseline == labels).mean() - (pred == labels).mean() <= 0.01


@pytest.mark.parametrize("name", sorted(MIN_TOP1))
def test_parity_with_pytorch(fp32_runs, name):
    """The weights as trained (PyTorch) and as our kernels run them agree on >= 99.9%
    of the test set's top-1."""
    pytest.importorskip("torch", reason="torch (the training extra) is not installed")
    from experts.training.nets import build_model, load_weights, torch_predictions

    model, x, _, pred, _ = fp32_runs[name]
    net = build_model(model.meta)
    load_weights(net, model.weights)
    theirs = torch_predictions(net, x).argmax(axis=1)
    assert (pred == theirs).mean() >= 0.999


@pytest.mark.parametrize("name", sorted(MIN_TOP1))
@pytest.mark.parametrize("precision", sorted(MAX_LOSS))
def test_precision_costs_little_accuracy(device, fp32_runs, name, precision):
    model, x, labels, pred, _ = fp32_runs[name]
    assert model.calibration is not None, "ship calibration.json (moe-alexnet calibrate)"
    ours, _ = top1(build_network(model, device, precision), x)
    loss = (pred == labels).mean() - (ours == labels).mean()
    assert loss <= MAX_LOSS[precision], (precision, loss)


@pytest.mark.parametrize("name", sorted(MIN_TOP1))
def test_one_store_serves_int16_and_int8(device, fp32_runs, name):
    """int16 and int8 of one model in one weight store (kernels/ops/store.py): at most
    1.05x the bytes of int16 alone, int16's scores unchanged, int8 (int16's high byte
    plane) within a point of fp32 on the test set."""
    model, x, labels, pred, _ = fp32_runs[name]
    alone = build_network(model, device, "int16")
    store = store_for(["int16", "int8"])
    int16 = build_network(model, device, "int16", store=store)
    int8 = build_network(model, device, "int8", store=store)
    assert int16.weight_bytes + int8.weight_bytes <= 1.05 * alone.weight_bytes
    np.testing.assert_array_equal(int16.run(x[:300]).scores, alone.run(x[:300]).scores)
    ours, _ = top1(int8, x)
    loss = (pred == labels).mean() - (ours == labels).mean()
    assert loss <= MAX_LOSS["int8"], loss


@pytest.mark.parametrize("name", sorted(MIN_TOP1))
@pytest.mark.parametrize("packed,base", [("int8g", "int8"), ("int16g", "int16")])
def test_grouped_precision_gives_the_plain_logits(device, fp32_runs, name, packed, base):
    """int8g / int16g sum the same integers as int8 / int16 (kernels/bitgroups.py)."""
    model, x, _, _, _ = fp32_runs[name]
    plain, grouped = build_network(model, device, base), build_network(model, device, packed)
    np.testing.assert_array_equal(grouped.run(x[:1000]).scores, plain.run(x[:1000]).scores)
    assert grouped.weight_bytes <= plain.weight_bytes  # packed only where it shrinks
