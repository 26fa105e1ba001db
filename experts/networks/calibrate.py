"""Measuring calibration ranges: every weighted layer's input, seen by running the
fp32 numpy twins over sample images (experts/networks/reference.py's `observe` hook).
The ranges go into calibration.json (experts/model/calibration.py)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from experts.model.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CalibrationError,
    weighted_layers,
)
from experts.model.mixture import is_mixture, mixture_spec, part_weights
from experts.model.spec import parse_layers
from experts.networks.reference import Observe, forward, route

METHODS = ("minmax", "percentile")
PERCENTILE = 99.99  # of the values seen; the tails beyond are clipped
KEEP = 1 << 20  # values kept per layer for percentiles (a seeded subsample)
DEFAULT_SAMPLES = 16  # synthetic images when a model has no calibration.json


class _Ranges:
    """Running min/max (and a seeded subsample for percentiles) per layer."""

    def __init__(self, method: str, seed: int = 0) -> None:
        if method not in METHODS:
            raise CalibrationError(f"unknown method {method!r}; supported: {', '.join(METHODS)}")
        self.method = method
        self.rng = np.random.default_rng(seed)
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}
        self.kept: dict[str, list[np.ndarray]] = {}

    def observe(self, name: str, x: np.ndarray) -> None:
        if x.size == 0:
            return
        self.low[name] = min(self.low.get(name, np.inf), float(x.min()))
        self.high[name] = max(self.high.get(name, -np.inf), float(x.max()))
        if self.method == "percentile":
            flat = x.ravel()
            take = min(flat.size, KEEP // 8)
            self.kept.setdefault(name, []).append(self.rng.choice(flat, take, replace=False))

    def result(self) -> dict[str, tuple[float, float]]:
        if self.method == "minmax":
            return {n: (self.low[n], self.high[n]) for n in self.low}
        out = {}
        for name, parts in self.kept.items():
            values = np.concatenate(parts)
            if values.size > KEEP:
                values = self.rng.choice(values, KEEP, replace=False)
            lo, hi = np.percentile(values, [100 - PERCENTILE, PERCENTILE])
            out[name] = (float(lo), float(hi))
        return out


def _prefixed(observe: Observe, prefix: str) -> Observe:
    return lambda name, x: observe(prefix + name, x)


def run_observed(
    meta: dict[str, Any],
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    observe: Observe,
    every_expert: bool = False,
) -> None:
    """One batch through the fp32 twins, every weighted layer's input observed; a
    mixture routes as at inference (its own k) and each expert sees its images only,
    or with `every_expert`, every image (for an expert the gate sent none)."""
    if not is_mixture(meta):
        forward(parse_layers(meta["layers"]), weights, x, observe)
        return
    spec = mixture_spec(meta)
    stem = forward(spec.stem, part_weights(weights, "stem"), x, _prefixed(observe, "stem."))
    stem = stem.reshape(len(x), *spec.stem_shape)
    logits = forward(spec.gate, part_weights(weights, "gate"), stem, _prefixed(observe, "gate."))
    indices, gates = route(logits, spec.k)
    merged = np.zeros((len(x), spec.features))
    for e in range(spec.experts):
        rows, slot = np.nonzero(indices == e)
        expert = part_weights(weights, f"experts.{e}")
        seen: Observe | None = _prefixed(observe, f"experts.{e}.")
        if every_expert:
            forward(spec.expert, expert, stem, seen)
            seen = None
        if not len(rows):
            continue
        out = forward(spec.expert, expert, stem[rows], seen)
        merged[rows] += out * gates[rows, slot][:, None]
    forward(
        spec.head,
        part_weights(weights, "head"),
        merged.astype(np.float32),
        _prefixed(observe, "head."),
    )


def calibrate(
    meta: dict[str, Any],
    weights: dict[str, np.ndarray],
    batches: Iterable[np.ndarray],
    method: str = "minmax",
    source: str = "",
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Measure every weighted layer's input range over `batches` (NCHW float32,
    preprocessed as the model expects). An expert no sample reached gets its
    stem-input range for its first layer and the widest range seen at each later
    layer among the other experts (it still runs, with a reasonable guess)."""
    ranges = _Ranges(method)
    samples = 0
    for x in batches:
        run_observed(meta, weights, np.ascontiguousarray(x, np.float32), ranges.observe)
        samples += len(x)
        if progress:
            progress(len(x))
    found = ranges.result()
    for name in weighted_layers(meta):
        if name not in found:
            found[name] = _fallback(name, found)
    return Calibration(found, method, samples, source)


def _fallback(name: str, found: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """The widest range among the same layer of the other experts."""
    layer = name.split(".")[-1]
    peers = [r for n, r in found.items() if n.startswith("experts.") and n.endswith("." + layer)]
    if not peers:
        raise CalibrationError(f"no sample reached layer {name}; use more samples")
    return (min(lo for lo, _ in peers), max(hi for _, hi in peers))


def synthetic_images(
    meta: dict[str, Any], count: int = DEFAULT_SAMPLES, seed: int = 0
) -> np.ndarray:
    """A deterministic stand-in calibration set: smooth random shapes plus noise, as
    uint8 pixels, normalised with the model's mean and std (NCHW float32)."""
    c, h, w = (int(s) for s in meta["input"]["shape"])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    images = np.empty((count, c, h, w), np.float32)
    for i in range(count):
        for ch in range(c):
            fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
            pixels = 255 * np.clip(wave * rng.uniform(0.3, 1) + rng.normal(0, 0.1, (h, w)), 0, 1)
            images[i, ch] = np.rint(pixels) / np.float32(255)
    mean = np.asarray(meta["input"].get("mean", [0.0] * c), np.float32).reshape(1, c, 1, 1)
    std = np.asarray(meta["input"].get("std", [1.0] * c), np.float32).reshape(1, c, 1, 1)
    return ((images - mean) / std).astype(np.float32)


def default_calibration(meta: dict[str, Any], weights: dict[str, np.ndarray]) -> Calibration:
    """Ranges from the synthetic set, with a warning: real images calibrate better."""
    warnings.warn(
        f"model {meta['name']!r} has no {CALIBRATION_FILE}: quantised layers use ranges "
        f"from {DEFAULT_SAMPLES} synthetic images; run `moe-alexnet calibrate --model "
        f"{meta['name']}` on real images for better accuracy",
        stacklevel=2,
    )
    return calibrate(meta, weights, [synthetic_images(meta)], source="synthetic (default)")
