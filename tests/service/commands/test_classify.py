"""`moe-alexnet classify` (service/commands/classify.py): photos and .npy batches against
the numpy reference, built-in models on random weights, corrupt weights reported in one
line, and a mixture's experts per image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experts.model.repository import Repository
from experts.model.spec import parse_layers
from tests.service.commands.cli import one_line_error, run


def test_classify_photo_json(capsys, repo, photo):
    code, out, err = run(
        capsys, "classify", str(photo), "--model", "tiny", "--json", "--top-k", "2"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "tiny" and doc["precision"] == "fp32" and doc["device"]
    (result,) = doc["results"]
    assert result["input"] == str(photo)
    preds = result["predictions"]
    assert len(preds) == 2 and preds[0]["score"] >= preds[1]["score"]
    assert {p["label"] for p in preds} <= {"cat", "dog", "fish"}


def test_classify_npy_batch_matches_reference(capsys, repo, tmp_path, tiny_meta):
    from experts.networks.reference import forward
    from kernels.reference import softmax

    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "batch.npy"
    np.save(path, x)
    code, out, err = run(capsys, "classify", str(path), "--model", "tiny", "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["input"] for r in results] == [f"{path}[{i}]" for i in range(3)]
    want = softmax(
        forward(parse_layers(tiny_meta["layers"]), Repository(repo).load("tiny").weights, x)
    )
    for r, probs in zip(results, want, strict=True):
        top = r["predictions"][0]
        assert top["index"] == int(np.argmax(probs))
        assert top["score"] == pytest.approx(float(probs.max()), rel=1e-4)


def test_classify_builtin_with_random_weights(capsys, photo, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(tmp_path))
    code, out, err = run(capsys, "classify", str(photo), "--model", "alexnet", "--random-weights")
    assert code == 0, err
    assert "model alexnet" in out


def test_corrupt_weights_are_reported(capsys, repo, photo):
    weights = repo / "tiny" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, "classify", str(photo), "--model", "tiny")
    assert "weights" in one_line_error(code, err)


def test_classify_mixture_reports_experts(capsys, moe_repo, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32))
    code, out, err = run(
        capsys, "classify", str(path), "--model", "small-moe", "--k", "3", "--json"
    )
    assert code == 0, err
    for result in json.loads(out)["results"]:
        experts = result["experts"]
        assert len(experts) == 3 and len({e["expert"] for e in experts}) == 3
        assert sum(e["weight"] for e in experts) == pytest.approx(1.0, abs=1e-5)
