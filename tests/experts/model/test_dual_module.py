"""dual-module.safetensors (experts/model/dual_module.py): the round trip through the
repository, every refusal naming the file and the layer, and the request syntax."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from experts.model.architectures import random_weights
from experts.model.dual_module import (
    DUAL_MODULE_FILE,
    DualModule,
    DualModuleError,
    parse_dual_request,
    resolve_layers,
)
from experts.model.model import ModelError
from experts.model.repository import Repository
from experts.networks.dual_fit import fit_dual_module
from tests.helpers import DUAL_NET, TINY_MOE


@pytest.fixture
def saved(tmp_path: Path, sample) -> tuple[Repository, DualModule]:
    repo = Repository(tmp_path)
    weights = random_weights(DUAL_NET, seed=3)
    repo.save("dual-net", DUAL_NET, weights)
    dual = fit_dual_module(DUAL_NET, weights, [sample], ["fc6", "fc7"], source="test")
    repo.write_file("dual-net", DUAL_MODULE_FILE, dual.to_bytes(DUAL_NET))
    return repo, dual


def test_round_trip(saved):
    repo, dual = saved
    got = repo.load("dual-net").dual_module
    assert got is not None and list(got.layers) == ["fc6", "fc7"]
    assert (got.skip_target, got.samples, got.source) == (0.9, 12, "test")
    for name, little in dual.layers.items():
        for key in ("project", "shift", "weight", "bias", "threshold"):
            np.testing.assert_array_equal(getattr(got.layers[name], key), getattr(little, key))


def _rewrite(repo: Repository, change) -> Path:
    path = repo.path("dual-net") / DUAL_MODULE_FILE
    with safetensors.safe_open(path, "numpy") as f:
        info = dict(f.metadata())
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    change(tensors, info)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=info))
    return path


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t, i: i.update(model="other"), "fitted for model 'other', not 'dual-net'"),
        (
            lambda t, i: t.update({"fc6.weight": t["fc6.weight"][:-1]}),
            r"fc6: weight has shape \(47, \d+\), the layer needs \(48, \d+\)",
        ),
        (lambda t, i: t.pop("fc7.bias"), "fc7: missing bias"),
        (
            lambda t, i: t.update({"fc8.project": t["fc7.project"]}),
            "fc8 is not a layer of 'dual-net' followed by ReLU",
        ),
        (
            lambda t, i: t["fc6.threshold"].fill(np.nan),
            "fc6: threshold holds values that are not finite",
        ),
        (lambda t, i: i.pop("skip_target"), "metadata lacks 'skip_target'"),
    ],
)
def test_files_that_do_not_fit_are_refused_naming_file_and_layer(saved, change, message):
    repo, _ = saved
    path = _rewrite(repo, change)
    with pytest.raises(ModelError, match=message) as info:
        repo.load("dual-net")
    assert str(path) in str(info.value)


def test_a_truncated_file_is_refused(saved):
    repo, _ = saved
    path = repo.path("dual-net") / DUAL_MODULE_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelError, match="unreadable dual-module file"):
        repo.load("dual-net")


@pytest.mark.parametrize(
    "text,want",
    [("fc6, fc7", ("fc6", "fc7")), ("", ()), ("none", ()), (None, ()), ("fc6,fc6", ("fc6",))],
)
def test_requests(text, want):
    assert parse_dual_request(text) == want


def test_none_with_layers_is_refused():
    with pytest.raises(DualModuleError, match="'none' cannot be combined"):
        parse_dual_request("none,fc6")


def test_mixture_names_match_every_expert():
    meta = copy.deepcopy(TINY_MOE)
    assert resolve_layers(meta, ["experts.1.fc"]) == ["experts.1.fc"]
    assert resolve_layers(meta, ["all"]) == [f"experts.{i}.fc" for i in range(4)]
    with pytest.raises(DualModuleError, match="head.out is not a fully connected layer followed"):
        resolve_layers(meta, ["out"])
