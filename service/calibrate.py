"""`moe-alexnet calibrate`: measure a model's layer input ranges on real images and
save them beside its weights (calibration.json, read when it runs at int8/int16)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".npy"}


class CalibrateError(ValueError):
    """Bad calibrate arguments (no images, unknown model); one line for the CLI."""


def _image_files(folder: Path, samples: int) -> list[Path]:
    if not folder.is_dir():
        raise CalibrateError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrateError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files[:samples]


def _batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def _samples(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[np.ndarray, str]:
    """The calibration images, preprocessed for the model, and where they came from."""
    from service.images import load_input

    if args.images is not None:
        files = _image_files(args.images, args.samples)
        x = np.concatenate([load_input(p, meta["input"]) for p in files])[: args.samples]
        return x, f"{len(files)} files under {args.images}"
    from experts.datasets import calibration_subset, load_fashion_mnist, to_model_input

    images, _ = load_fashion_mnist("train", args.data_dir)  # none of the test images
    return to_model_input(calibration_subset(images, args.samples), meta["input"]), (
        "fashion-mnist train"
    )


def run_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from experts.calibration import CALIBRATION_FILE, calibrate
    from experts.loading import resolve_model
    from experts.repository import Repository

    model = resolve_model(args.model or settings.default_model, settings.model_repository)
    x, source = _samples(args, model.meta)
    start = time.perf_counter()
    with tqdm(total=len(x), desc=f"calibrate {model.name}", unit="img", file=sys.stderr,
              leave=False) as bar:  # fmt: skip
        result = calibrate(model.meta, model.weights, _batches(x, args.batch), args.method,
                           source, bar.update)  # fmt: skip
    path = Repository(settings.model_repository).write_file(
        model.name, CALIBRATION_FILE, result.to_json(model.meta).encode("utf-8")
    )
    print(f"calibrated {model.name}: {len(result.ranges)} layers, {result.samples} images "
          f"({source}), {args.method}, {time.perf_counter() - start:.1f} s -> {path}")  # fmt: skip
    return 0
