#!/usr/bin/env python3
"""Accuracy of int8 read from the high byte of int16 weights (one store, two precisions).

Weights alone: each variant's weights are put back as floats and the model runs at fp32
on the Fashion-MNIST test images, so only the weights' rounding differs between rows.

    python scripts/high_plane_accuracy.py fashion-alexnet fashion-moe
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIGNED_MAX = 32639  # |q| at int16 that keeps a signed split's high byte in [-127, 127]


def variants(w: np.ndarray) -> dict[str, np.ndarray]:
    """The weight tensor `w` [O, ...] as each storage would give it back."""
    m = w.reshape(len(w), -1).astype(np.float64)
    peak = np.abs(m).max(axis=1, keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    s8, s16 = peak / 127, peak / 32767
    q16 = np.clip(np.rint(m / s16), -32767, 32767)
    floor_hi = np.floor(q16 / 256)  # the high byte beside an unsigned low byte
    s16r = peak / SIGNED_MAX
    q16r = np.clip(np.rint(m / s16r), -SIGNED_MAX, SIGNED_MAX)
    hi = np.floor((q16r + 128) / 256)  # round(q / 256), halves up
    lo = q16r - 256 * hi
    assert -127 <= hi.min() and hi.max() <= 127 and -128 <= lo.min() and lo.max() <= 127
    out = {
        "int16": q16 * s16,
        f"int16 to {SIGNED_MAX}": q16r * s16r,
        "int8, its own scale": np.rint(m / s8) * s8,
        "high byte, unsigned low byte": floor_hi * 256 * s16,
        "the same read as hi + 1/2": (floor_hi + 0.5) * 256 * s16,
        "high byte, signed low byte": hi * 256 * s16r,
    }
    return {name: v.reshape(w.shape).astype(np.float32) for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="repository models (Fashion-MNIST ones)")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from experts.data.fashion_mnist import load_fashion_mnist, to_model_input
    from experts.model.repository import Repository
    from experts.networks.build import build_network
    from kernels.runtime import Device
    from service.commands.evaluate import evaluate

    images, labels = load_fashion_mnist("test")
    device = Device(None)
    for name in args.models:
        model = Repository(args.repository).load(name)
        x = to_model_input(images, model.meta["input"])
        base = evaluate(build_network(model, device, "fp32"), x, labels, None, 256, name)
        print(f"{name}: fp32 top-1 {100 * base['top1']:.2f}%", flush=True)
        stored = {
            key: variants(w)
            for key, w in model.weights.items()
            if key.endswith(".weight") and w.ndim >= 2
        }
        for variant in next(iter(stored.values())):
            changed = copy.copy(model)
            changed.weights = {**model.weights, **{k: v[variant] for k, v in stored.items()}}
            network = build_network(changed, device, "fp32")
            top1 = evaluate(network, x, labels, None, 256, variant)["top1"]
            delta = 100 * (top1 - base["top1"])
            print(f"{name}: {variant}: {100 * top1:.2f}% ({delta:+.2f} pt)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
