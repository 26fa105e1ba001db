"""`moe-alexnet bench` (service/commands/bench.py): JSON rows beside onnxruntime, a
mixture's rows per k, per-layer device times, dataset images with the experts they
used, and several models timed together."""

from __future__ import annotations

import json

import pytest

from experts.model.architectures import random_weights
from experts.model.spec import fuse_relu, parse_layers
from tests.service.commands.cli import one_line_error, run


def test_bench_json_rows_with_onnxruntime(capsys, repo, tiny_meta):
    pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        "tiny",
        "--batch",
        "1,3",
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--compare",
        "onnxruntime",
        "--json",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        ("moe-alexnet", 1),
        ("onnxruntime", 1),
        ("moe-alexnet", 3),
        ("onnxruntime", 3),
    ]
    keys = {
        "runtime",
        "model",
        "precision",
        "batch",
        "images_per_s",
        "latency_ms_p50",
        "latency_ms_p90",
        "weight_bytes",
        "peak_rss_bytes",
        "device",
    }
    for row in rows:
        assert keys <= set(row)
        assert row["images_per_s"] > 0 and row["latency_ms_p90"] >= row["latency_ms_p50"]
    assert rows[0]["weight_bytes"] >= 4 * sum(v.size for v in random_weights(tiny_meta, 0).values())
    assert isinstance(rows[0]["int8_dot_products"], bool)  # which int8 path the device has
    want = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    assert rows[1]["ratio"] == pytest.approx(want, abs=1e-3)  # rounded to 3 decimals


def test_bench_int8_rows_beside_onnxruntimes_static_int8(capsys, repo):
    """int8 rows are compared with onnxruntime's own static int8 (QDQ, per-channel),
    calibrated on the images ours used (tiny has no calibration.json: the synthetic
    set); fp32 rows with onnxruntime's fp32, both sessions made once."""
    pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    argv = ["bench", "--model", "tiny", "--precision", "int8,fp32", "--batch", "2"]
    code, out, err = run(capsys, *argv, "--iterations", "2", "--compare", "onnxruntime", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("moe-alexnet", "int8"),
        ("onnxruntime", "int8 (onnxruntime static QDQ, per-channel)"),
        ("moe-alexnet", "fp32"),
        ("onnxruntime", "fp32"),
    ]
    assert rows[1]["calibration"] == "synthetic" and "calibration" not in rows[3]
    assert rows[1]["weight_bytes"] < 0.5 * rows[3]["weight_bytes"]  # int8 initializers


def test_bench_mixture_rows_per_k(capsys, moe_repo):
    argv = [
        "bench",
        "--model",
        "small-moe",
        "--batch",
        "4",
        "--experts",
        "1,2",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--json",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["k"] for r in rows] == [1, 2]
    assert all(r["activation_bytes"] > 0 for r in rows)


def test_bench_profile_gives_each_layer_its_device_time(capsys, moe_repo, tiny_meta):
    """--profile: one entry per layer that launches kernels, in launch order, named as
    in model.json (with the mixture part in front), each with its kernels and a device
    time. (tiny's flatten launches none: the pool before it writes its order.)"""
    argv = [
        "bench",
        "--model",
        "tiny,small-moe",
        "--batch",
        "2",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--profile",
        "--json",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    tiny, moe = [json.loads(line) for line in out.splitlines()]
    layers = [layer.name for layer in fuse_relu(parse_layers(tiny_meta["layers"]))]
    assert layers[2] == "flat" and layers[1].startswith("pool")
    launched = layers[:2] + layers[3:]
    assert [p["layer"] for p in tiny["profile"]] == ["input", *launched]
    assert all(p["ms"] >= 0 and p["kernels"] for p in tiny["profile"])
    assert tiny["profile"][1]["ms"] > 0  # conv1 takes measurable time
    assert sum(p["ms"] for p in tiny["profile"]) < tiny["latency_ms_p90"] * 2
    named = [p["layer"] for p in moe["profile"]]
    assert named[0] == "stem.input" and named[-1].startswith("head.")
    assert "route" in named and any(n.startswith("experts.") for n in named)
    code, out, _ = run(capsys, *argv[:-1])  # the text form: a line per layer under the row
    assert code == 0 and "device time per layer" in out and "\n    conv" in out


def test_bench_on_dataset_images_reports_the_experts_used(capsys, tmp_path, test_split):
    data = test_split
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--batch",
        "8",
        "--iterations",
        "4",
        "--warmup",
        "0",
        "--json",
    )
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["inputs"] == "fashion-mnist" and 1.0 <= row["experts_per_batch"] <= 4.0
    code, _, err = run(
        capsys,
        "bench",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--batch",
        "41",
    )
    assert "fewer than batch 41" in one_line_error(code, err)
    missing = str(tmp_path / "none")
    code, _, err = run(
        capsys,
        "bench",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        missing,
    )
    assert "does not exist" in one_line_error(code, err)


def test_bench_times_several_models_together(capsys, moe_repo):
    """Rows of one batch size come out per model and k, in the order asked."""
    argv = [
        "bench",
        "--model",
        "tiny,small-moe",
        "--batch",
        "2,3",
        "--experts",
        "1,2",
        "--iterations",
        "4",
        "--rounds",
        "2",
        "--warmup",
        "1",
        "--json",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["model"], r["batch"], r.get("k")) for r in rows] == [
        ("tiny", 2, None),
        ("small-moe", 2, 1),
        ("small-moe", 2, 2),
        ("tiny", 3, None),
        ("small-moe", 3, 1),
        ("small-moe", 3, 2),
    ]
    assert all(r["images_per_s"] > 0 for r in rows)


def test_bench_says_how_weights_are_stored(capsys, moe_repo):
    """int8 beside int16 reads int16's planes (one store); int8g reports its bits per
    weight, per layer and for the model."""
    argv = ["bench", "--model", "tiny,small-moe", "--batch", "2", "--iterations", "2"]
    code, out, err = run(capsys, *argv, "--precision", "int16,int8,int8g", "--json")
    assert code == 0, err
    rows = {(r["model"], r["precision"]): r for r in map(json.loads, out.splitlines())}
    for model in ("tiny", "small-moe"):
        assert rows[(model, "int8")]["weights"] == "int16's high byte plane"
        assert rows[(model, "int8")]["weight_bytes"] < rows[(model, "int16")]["weight_bytes"] / 10
        assert "weights" not in rows[(model, "int16")] and "weights" not in rows[(model, "int8g")]
        bits = rows[(model, "int8g")]["bits_per_weight"]
        assert 0 < bits["model"] <= 8 and len(bits) > 1
    assert "bits_per_weight" not in rows[("tiny", "int8")]
    code, out, err = run(capsys, *argv, "--precision", "int8g")
    assert code == 0, err
    assert "bits/weight" in out


def test_runners_take_turns_in_alternating_order(monkeypatch):
    """Blocks of each runner in every round, the order reversed every other round (so
    none always follows onnxruntime's spinning threads), warm-up in the first round."""
    import argparse

    from service.commands import bench

    monkeypatch.setattr(bench, "BLOCK_PAUSE_S", 0.0)
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    args = argparse.Namespace(iterations=6, rounds=3)
    times = bench.time_rounds(runners, args, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}  # 2 a round
    blocks = [calls[0]] + [n for i, n in enumerate(calls[1:], 1) if n != calls[i - 1]]
    assert blocks == ["a", "b", "c", "b", "a", "b", "c"]  # a round's last block runs on
    assert calls[:4] == ["a"] * 4  # 2 warm-up + 2 timed
    assert len(calls) == 3 * 3 * 2 + 3 * 2 + 6 * 1
