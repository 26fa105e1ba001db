"""`moe-alexnet eval` (service/commands/evaluate.py): accuracy and routing on a
Fashion-MNIST test split, and a missing dataset in one line."""

from __future__ import annotations

import json

import pytest

from tests.service.commands.cli import one_line_error, run


def test_eval_reports_accuracy_and_routing(capsys, test_split):
    data = test_split
    code, out, err = run(
        capsys,
        "eval",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--data-dir",
        str(data),
        "--batch",
        "16",
        "--json",
    )
    assert code == 0, err
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["images"] == 40 and 0 <= result["top1"] <= result["top5"] <= 1
    assert sum(result["routing_share"]) == pytest.approx(1.0)
    assert len(result["expert_top1"]) == 4 and 0 < result["mean_gate_weight"] <= 1
    assert result["agreement_with_first"] == 1.0


def test_eval_reports_how_weights_are_stored(capsys, test_split):
    """int16 and int8 share a store as in a server; int8g logits are int8's."""
    argv = ["eval", "--model", "fashion-alexnet", "--random-weights"]
    argv += ["--data-dir", str(test_split), "--precision", "int16,int8,int8g"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    rows = {r["precision"]: r for r in map(json.loads, out.splitlines())}
    assert rows["int8"]["weights"] == "int16's high byte plane"
    bits = rows["int8g"]["bits_per_weight"]
    assert {"conv1", "fc6", "fc8", "model"} <= set(bits) and bits["model"] <= 8
    assert "weights" not in rows["int8g"]  # its own int8 weights, packed
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "weights: int16's high byte plane" in out and "bits per weight: " in out


def test_eval_without_dataset_is_one_line(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "eval",
        "--model",
        "fashion-alexnet",
        "--random-weights",
        "--data-dir",
        str(tmp_path / "nowhere"),
    )
    assert "dataset-fashion-mnist" in one_line_error(code, err)
