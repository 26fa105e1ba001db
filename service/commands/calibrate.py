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

from experts.data.fashion_mnist import calibration_subset, load_fashion_mnist, to_model_input
from experts.model.calibration import CALIBRATION_FILE
from experts.model.dual_module import DUAL_MODULE_FILE, resolve_layers
from experts.model.quantized import copy_name, existing_copies, make_copy
from experts.model.repository import Repository
from experts.model.resolve import resolve_model
from experts.networks.calibrate import METHODS, calibrate
from experts.networks.dual_fit import DEFAULT_SKIP, fit_dual_module
from service.commands import args as common
from service.failures import UsageError
from service.images import load_input

HELP = (
    "measure layer input ranges for int8/int16 (calibration.json), or fit the little "
    "modules of dual-module inference (--dual-module: dual-module.safetensors)"
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".npy"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="model in the repository (default: MOE_DEFAULT_MODEL)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images",
        type=Path,
        default=None,
        help="a folder of images (or preprocessed .npy tensors)",
    )
    source.add_argument(
        "--dataset",
        choices=["fashion-mnist"],
        default=None,
        help="the Fashion-MNIST training images",
    )
    p.add_argument("--samples", type=common.positive, default=512, help="images to use, at most")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="minmax",
        help="range of each layer's input: all values seen, or the "
        "0.01-99.99th percentiles (clips outliers)",
    )
    p.add_argument("--batch", type=common.positive, default=64, help="images per run")
    p.add_argument(
        "--dual-module",
        type=common.dual_module,
        default=None,
        metavar="LAYERS",
        help="instead of ranges, fit little modules for these layers (e.g. fc6,fc7 or all) "
        "and write dual-module.safetensors",
    )
    p.add_argument(
        "--skip-target",
        type=float,
        default=DEFAULT_SKIP,
        help="--dual-module: share of outputs to skip at most, in (0, 1); outputs the "
        "little module estimates positive are always computed",
    )
    p.add_argument(
        "--rank",
        type=common.positive,
        default=None,
        help="--dual-module: directions per little module (default: min(32, the layer's "
        "smaller side / 10))",
    )
    p.add_argument("--data-dir", type=Path, default=None, help=common.FASHION_DIR_HELP)
    common.models_dir_arg(p)


def _image_files(folder: Path, samples: int) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files[:samples]


def _batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def _samples(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[np.ndarray, str]:
    """The calibration images, preprocessed for the model, and where they came from."""
    if args.images is not None:
        files = _image_files(args.images, args.samples)
        x = np.concatenate([load_input(p, meta["input"]) for p in files])[: args.samples]
        return x, f"{len(files)} files under {args.images}"
    images, _ = load_fashion_mnist("train", args.data_dir)  # none of the test images
    return to_model_input(calibration_subset(images, args.samples), meta["input"]), (
        "fashion-mnist train"
    )


def run(args: argparse.Namespace) -> int:
    settings = common.settings(args, flags=())
    model = resolve_model(args.model or settings.default_model, settings.model_repository)
    layers = resolve_layers(model.meta, args.dual_module) if args.dual_module else []
    if layers and not 0 < args.skip_target < 1:
        raise UsageError(f"--skip-target must lie in (0, 1), got {args.skip_target}")
    x, source = _samples(args, model.meta)
    start = time.perf_counter()
    repository = Repository(settings.model_repository)
    with tqdm(
        total=len(x), desc=f"calibrate {model.name}", unit="img", file=sys.stderr, leave=False
    ) as bar:
        batches = _batches(x, args.batch)
        if layers:
            dual = fit_dual_module(
                model.meta,
                model.weights,
                batches,
                layers,
                args.rank,
                args.skip_target,
                source,
                bar.update,
            )
            data, fname = dual.to_bytes(model.meta), DUAL_MODULE_FILE
            what = f"little modules for {len(layers)} layers", f"skip target {args.skip_target}"
        else:
            result = calibrate(model.meta, model.weights, batches, args.method, source, bar.update)
            data, fname = result.to_json(model.meta).encode("utf-8"), CALIBRATION_FILE
            what = f"{len(result.ranges)} layers", args.method
    path = repository.write_file(model.name, fname, data)
    print(
        f"calibrated {model.name}: {what[0]}, {len(x)} images ({source}), {what[1]}, "
        f"{time.perf_counter() - start:.1f} s -> {path}"
    )
    if not layers:  # quantised copies carry the ranges: made again with the new ones
        model = repository.load(model.name)
        for precision in existing_copies(model):
            copy = repository.write_file(
                model.name, copy_name(precision), make_copy(model, precision)
            )
            print(f"made the {precision} copy again with the new ranges -> {copy}")
    return 0
