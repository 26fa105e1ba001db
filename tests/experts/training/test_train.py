"""Training runs (experts/training/train.py) on Fashion-MNIST into a temporary
repository: bad options refused, a tiny run saves a loadable, calibrated model, bf16
autocast, distillation from a repository teacher, determinism, and a GPU run."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.model.repository import Repository  # noqa: E402
from experts.training.train import TrainingError, native_bf16, train  # noqa: E402
from tests.helpers import needs_data  # noqa: E402


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


@needs_data
def test_same_seed_same_weights(tmp_path):
    def run(folder: str) -> dict[str, np.ndarray]:
        train("fashion-moe", epochs=1, limit=256, seed=7, out_dir=tmp_path / folder, progress=False)
        return Repository(tmp_path / folder).load("fashion-moe").weights

    first, second = run("a"), run("b")
    assert all(np.array_equal(first[key], second[key]) for key in first)


@needs_data
@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch has no CUDA GPU")
def test_training_on_a_gpu_exports_what_the_engine_runs(tmp_path):
    record = train(
        "fashion-moe", epochs=1, limit=256, out_dir=tmp_path, progress=False, device="cuda"
    )
    assert record["device"] == "cuda" and record["gpu"]
    assert record["parity"]["same_top1"] and record["parity"]["same_routing"]
    assert Repository(tmp_path).load("fashion-moe").calibration is not None
