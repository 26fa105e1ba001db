"""Training the Fashion-MNIST models with PyTorch (the `train` extra), on the CPU or,
with `device="cuda"`, an NVIDIA GPU.

The torch networks are generated from our own model.json specs (experts/training/
nets.py), trained, exported under our weight names and saved into the model
repository with a `training.json` that records how they were made. torch is imported
only where it is needed, so the CLI can say what to install without the extra.

The recipe per architecture is `ARCH_DEFAULTS`: random crops and flips, AdamW with a
one-cycle schedule, label smoothing; a mixture adds the load-balancing loss, more
epochs, lighter dropout (the identity once served), clean routing for its last
epochs and routing by the un-augmented image (both so the gate learns what it will
serve), and optionally distillation from a trained model (`teacher`). Why each
choice, and the runs behind it: BENCHMARKS.md, "Trained models".
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from experts.data.fashion_mnist import calibration_subset, load_fashion_mnist, to_model_input
from experts.model.architectures import fashion_alexnet, fashion_moe
from experts.model.model import ModelError
from experts.model.repository import Repository, default_root
from experts.networks.calibrate import calibrate
from kernels.devices import host_cpu_flags

ARCHS = {"fashion-alexnet": fashion_alexnet, "fashion-moe": fashion_moe}
# Per-architecture defaults: the recipes of the shipped models, each sized to train
# within the hour on 2 CPU cores (BENCHMARKS.md, "Trained models", has the runs).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion-alexnet": {"epochs": 32, "autocast": "auto", "weight_decay": 0.1},
    "fashion-moe": {"epochs": 72, "dropout": 0.25, "clean_fraction": 0.2, "route_clean": True},
}
# Mixed-precision training: "bf16" runs the forward pass's convolutions and matrix
# products in bfloat16 (weights, optimiser and loss stay float32; the exported and
# evaluated network is float32): a faster step where the device has native bfloat16
# and the network has large operations (fashion-alexnet; not the mixture's many small
# ones). "auto" picks bf16 where the device computes it natively.
AUTOCAST = ("off", "bf16", "auto")
TORCH_HINT = "PyTorch is not installed: pip install 'moe-alexnet[train]'"


class TrainingError(RuntimeError):
    """A training run that cannot start (no torch, unknown architecture, bad options)."""


def require_torch() -> ModuleType:
    """torch, or a TrainingError that says how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise TrainingError(TORCH_HINT) from exc
    return torch


def seed_everything(seed: int) -> None:
    """Seed every generator a run touches: torch (init, dropout, gate noise), numpy
    and Python's, so two runs with the same seed and thread count match."""
    torch = require_torch()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run (recorded in training.json to reproduce it)."""

    arch: str
    epochs: int
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    balance_weight: float = 0.01
    dropout: float | None = None
    clean_fraction: float = 0.0  # mixtures: last share of epochs routed without noise
    route_clean: bool = False  # mixtures: route each image by its un-augmented original
    limit: int | None = None
    device: str = "cpu"  # torch's device: "cpu", "cuda", "cuda:1", ...
    autocast: str = "off"  # "bf16": forward passes in bfloat16 (see AUTOCAST), else "off"
    teacher: str | None = None  # a repository model to distil from (see distillation_targets)
    distill: float = 0.5  # with a teacher: the distillation loss's share of the task loss
    temperature: float = 4.0  # with a teacher: softmax temperature of both score sets

    def check(self) -> None:
        if self.arch not in ARCHS:
            raise TrainingError(
                f"unknown architecture {self.arch!r}; trainable: {', '.join(ARCHS)}"
            )
        if self.epochs < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise TrainingError("epochs, batch size and limit must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.balance_weight < 0:
            raise TrainingError("lr must be > 0, weight decay and balance weight >= 0")
        if not 0 <= self.clean_fraction <= 1:
            raise TrainingError(f"clean fraction must be in [0, 1], got {self.clean_fraction}")
        if not 0 <= self.distill <= 1 or self.temperature <= 0:
            raise TrainingError("distill must be in [0, 1] and temperature > 0")
        if self.autocast not in AUTOCAST:
            raise TrainingError(
                f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}"
            )
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise TrainingError(f"dropout must be in [0, 1), got {self.dropout}")
        torch = require_torch()
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise TrainingError(f"unknown torch device {self.device!r}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(
                f"torch device {self.device!r}: this torch has no CUDA GPU to run on"
            )


def train(
    arch: str,
    epochs: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    batch_size: int = 128,
    lr: float = TrainConfig.lr,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    *,
    name: str | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
    threads: int | None = None,
    teacher_dir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train `arch` from scratch and save it as model `name` (default: the arch name)
    in the repository at `out_dir` (default: the model repository); returns the summary
    also written to the model's training.json, plus the model's `path`.

    `limit` keeps the first N images of each split (quick trials and tests); `options`
    are further TrainConfig fields (weight_decay, label_smoothing, balance_weight,
    dropout, teacher, ...); epochs and unset fields default to ARCH_DEFAULTS[arch]. A
    `teacher` is looked up in `teacher_dir` (default: the model repository). `threads`
    defaults to every core (on a busy machine fewer can be faster: torch's threads
    wait for each other at every operation).
    """
    defaults = dict(ARCH_DEFAULTS.get(arch, {}))
    default_epochs = defaults.pop("epochs", 1)
    epochs = default_epochs if epochs is None else epochs
    config = TrainConfig(arch, epochs, seed, batch_size, lr, limit=limit, **{**defaults, **options})
    config.check()
    torch = require_torch()
    if config.autocast == "auto":
        config = replace(config, autocast="bf16" if native_bf16(config.device) else "off")
    from experts.training.loop import Trainer  # torch: the train extra
    from experts.training.nets import export_weights

    seed_everything(seed)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    meta = {**ARCHS[arch](), "name": name or arch}
    data = load_data(meta, data_dir, limit)
    if config.teacher is not None:
        data |= distillation_targets(config, meta, data, teacher_dir or default_root())
    trainer = Trainer(meta, config, train_images=len(data["train_y"]))
    start = time.perf_counter()
    history = [trainer.run_epoch(e, data, progress) for e in range(epochs)]
    summary = _summary(config, meta, trainer, data, history, time.perf_counter() - start)
    summary["command"] = shlex.join(command if command is not None else sys.argv)
    root = Path(out_dir) if out_dir is not None else default_root()
    weights = export_weights(trainer.model)
    # Ranges for int8/int16, as `moe-alexnet calibrate --dataset fashion-mnist` would.
    sample = to_model_input(calibration_subset(data["train_x"]), meta["input"])
    calibration = calibrate(meta, weights, [sample], source="fashion-mnist train")
    extra = {
        "training.json": (json.dumps(summary, indent=2) + "\n").encode(),
        "calibration.json": calibration.to_json(meta).encode(),
    }
    path = Repository(root).save(meta["name"], meta, weights, True, extra)
    return {**summary, "path": str(path)}


def native_bf16(device: str) -> bool:
    """Whether the torch device computes bfloat16 in hardware: a CUDA GPU that says so,
    or a CPU with AVX512-BF16 or AMX (elsewhere torch emulates it, slower than float32)."""
    torch = require_torch()
    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & host_cpu_flags())


def load_data(
    meta: dict[str, Any], data_dir: str | Path | None = None, limit: int | None = None
) -> dict[str, np.ndarray]:
    """Training images stay uint8 (augmented per batch); test images are preprocessed
    once with our own preprocessing, as the served model will see them."""
    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    n, m = (len(train_y), len(test_y)) if limit is None else (limit, limit)
    return {
        "train_x": train_x[:n],
        "train_y": train_y[:n],
        "test_x": to_model_input(test_x[:m], meta["input"]),
        "test_y": test_y[:m],
    }


def distillation_targets(
    config: TrainConfig, meta: dict[str, Any], data: dict[str, np.ndarray], root: str | Path
) -> dict[str, Any]:
    """The teacher's scores for every training image, made once before training.

    Knowledge distillation (Hinton et al., 2015): the student also learns the
    teacher's softened scores, which say which wrong classes are near (a shirt that
    looks like a T-shirt), something a one-hot label cannot. The teacher sees each
    image un-augmented, once; the student's shifted and flipped copy of it learns the
    same targets (label-preserving augmentation), which keeps a step as cheap as
    without a teacher. Returns the scores and the teacher's own test accuracy.
    """
    from experts.training.nets import build_model, load_weights, predict  # torch

    try:
        teacher = Repository(Path(root)).load(config.teacher)
    except ModelError as exc:
        raise TrainingError(f"teacher {config.teacher!r}: {exc}") from exc
    if teacher.meta["input"] != meta["input"] or teacher.num_classes != len(meta["labels"]):
        raise TrainingError(
            f"teacher {config.teacher!r} takes other inputs or scores other classes than "
            f"{meta['name']}"
        )
    torch = require_torch()
    model = build_model(teacher.meta).to(torch.device(config.device))
    load_weights(model, teacher.weights)
    train_x = to_model_input(data["train_x"], meta["input"])
    test_top1 = predict(model, data["test_x"])[0].argmax(1)
    return {
        "teacher_scores": predict(model, train_x)[0],
        "teacher_test_accuracy": round(float((test_top1 == data["test_y"]).mean()), 4),
    }


def _summary(
    config: TrainConfig, meta: dict, trainer: Any, data: dict, history: list, seconds: float
) -> dict[str, Any]:
    """What training.json records: how to reproduce the run and what it reached.
    train_accuracy is the last epoch's running accuracy (augmented, training mode)."""
    torch = require_torch()
    final = trainer.evaluate(data["test_x"], data["test_y"])
    summary = {
        "name": meta["name"],
        **asdict(config),
        "train_images": len(data["train_y"]),
        "test_images": len(data["test_y"]),
        "train_accuracy": history[-1]["train_accuracy"],
        "test_accuracy": final["accuracy"],
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(history), 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "history": history,
        **({"teacher_test_accuracy": data["teacher_test_accuracy"]} if config.teacher else {}),
        "parity": trainer.parity(data["test_x"][:32]),
    }
    if trainer.device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(trainer.device)
    if "routing" in final:
        summary["routing"] = final["routing"]
    return summary
