"""Calibration for the quantised precisions, and per-layer precision maps.

int8 and int16 quantise each conv/linear layer's input with a scale and zero point
taken from the range that input covers on sample images (kernels/precision.py).
Those ranges are measured here, by running the fp32 numpy twins over the samples
(`observe` hooks in experts/reference_network.py), and kept beside the weights in
`calibration.json`:

    {"format": 1, "model": "fashion-alexnet", "version": "1", "method": "minmax",
     "samples": 512, "source": "fashion-mnist train", "ranges": {"conv1": [-0.81, 2.02], ...}}

A mixture's layers are named by part, as its weights are: "stem.conv1",
"gate.gfc", "experts.3.conv2", "head.fc8"; each expert is calibrated on the images
the gate sends it.

Layer names are the keys of per-layer precision maps too (`layer_precisions` in
model.json, `--layer-precision` on the command line).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from experts.mixture import mixture_spec, part_weights, route
from experts.reference_network import forward
from experts.spec import SpecError, normalise_layers
from kernels.precision import PRECISIONS, get_precision

CALIBRATION_FILE = "calibration.json"
METHODS = ("minmax", "percentile")
PERCENTILE = 99.99  # of the values seen; the tails beyond are clipped
KEEP = 1 << 20  # values kept per layer for percentiles (a seeded subsample)
DEFAULT_SAMPLES = 16  # synthetic images when a model has no calibration.json

Observe = Callable[[str, np.ndarray], None]


class CalibrationError(SpecError):
    """A calibration or per-layer precision map that does not fit the model."""


def weighted_layers(meta: dict[str, Any]) -> list[str]:
    """Names of the layers that have weights (conv, linear): the ones a precision
    applies to, in order; a mixture's carry their part's prefix."""

    def names(layers: list[dict[str, Any]], prefix: str = "") -> list[str]:
        return [f"{prefix}{x['name']}" for x in normalise_layers(layers)
                if x["op"] in ("conv", "linear")]  # fmt: skip

    if meta.get("kind") != "mixture":
        return names(meta["layers"])
    spec = mixture_spec(meta)
    return [*names(spec.stem, "stem."), *names(spec.gate, "gate."),
            *(n for i in range(spec.experts) for n in names(spec.expert, f"experts.{i}.")),
            *names(spec.head, "head.")]  # fmt: skip


def parse_layer_precisions(text: str) -> dict[str, str]:
    """Parse a per-layer map: "conv1=fp32,fc8=fp16" -> {"conv1": "fp32", "fc8": "fp16"}
    (names checked later, against the model)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, precision = item.partition("=")
        if not sep or not name.strip():
            raise CalibrationError(f"layer precision {item!r}: expected LAYER=PRECISION")
        out[name.strip()] = precision.strip()
    return out


def layer_precisions(meta: dict[str, Any], overrides: dict[str, str] | None = None) -> dict:
    """The model's own map (model.json `layer_precisions`) with `overrides` on top,
    every name and precision checked: a CalibrationError before any work starts."""
    merged = {**(meta.get("layer_precisions") or {}), **(overrides or {})}
    known = weighted_layers(meta)
    for name, precision in merged.items():
        if name not in known:
            raise CalibrationError(
                f"layer precision for {name!r}: the model {meta['name']!r} has no conv or "
                f"linear layer of that name; layers: {', '.join(known)}"
            )
        if precision not in PRECISIONS:
            raise CalibrationError(
                f"layer precision for {name!r}: unknown precision {precision!r}; "
                f"supported: {', '.join(PRECISIONS)}"
            )
    return merged


@dataclass
class Calibration:
    """Input ranges of every weighted layer, measured on `samples` images."""

    ranges: dict[str, tuple[float, float]]
    method: str = "minmax"
    samples: int = 0
    source: str = ""

    def to_json(self, meta: dict[str, Any]) -> str:
        doc = {
            "format": 1,
            "model": meta["name"],
            "version": str(meta.get("version", "1")),
            "method": self.method,
            "samples": self.samples,
            "source": self.source,
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, doc: Any, meta: dict[str, Any], where: str) -> Calibration:
        """Parse and check against the model: its name and every weighted layer,
        nothing else."""
        if not isinstance(doc, dict) or not isinstance(doc.get("ranges"), dict):
            raise CalibrationError(f'{where}: expected an object with "ranges"')
        if doc.get("model") != meta["name"]:
            raise CalibrationError(
                f"{where}: calibrated for model {doc.get('model')!r}, not {meta['name']!r}"
            )
        known = weighted_layers(meta)
        ranges = doc["ranges"]
        unknown = sorted(set(ranges) - set(known))
        missing = [n for n in known if n not in ranges]
        if unknown or missing:
            raise CalibrationError(
                f"{where}: does not match the model's layers"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + " (re-run `moe-alexnet calibrate`)"
            )
        out: dict[str, tuple[float, float]] = {}
        for name in known:
            value = ranges[name]
            ok = isinstance(value, list) and len(value) == 2
            ok = ok and all(isinstance(v, int | float) and np.isfinite(v) for v in value)
            if not ok or value[0] > value[1]:
                raise CalibrationError(f"{where}: range of {name} must be [low, high], got "
                                       f"{value!r}")  # fmt: skip
            out[name] = (float(value[0]), float(value[1]))
        return cls(out, str(doc.get("method", "minmax")), int(doc.get("samples", 0)),
                   str(doc.get("source", "")))  # fmt: skip


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


def _run(meta: dict[str, Any], weights: dict[str, np.ndarray], x: np.ndarray,
         observe: Observe) -> None:  # fmt: skip
    """One batch through the fp32 twins, every weighted layer's input observed; a
    mixture routes as at inference (its own k) and each expert sees its images only."""
    if meta.get("kind") != "mixture":
        forward(meta["layers"], weights, x, observe)
        return
    spec = mixture_spec(meta)
    stem = forward(spec.stem, part_weights(weights, "stem"), x, _prefixed(observe, "stem."))
    stem = stem.reshape(len(x), *spec.stem_shape)
    logits = forward(spec.gate, part_weights(weights, "gate"), stem, _prefixed(observe, "gate."))
    indices, gates = route(logits, spec.k)
    merged = np.zeros((len(x), spec.features))
    for e in range(spec.experts):
        rows, slot = np.nonzero(indices == e)
        if not len(rows):
            continue
        out = forward(spec.expert, part_weights(weights, f"experts.{e}"), stem[rows],
                      _prefixed(observe, f"experts.{e}."))  # fmt: skip
        merged[rows] += out * gates[rows, slot][:, None]
    forward(spec.head, part_weights(weights, "head"), merged.astype(np.float32),
            _prefixed(observe, "head."))  # fmt: skip


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
        _run(meta, weights, np.ascontiguousarray(x, np.float32), ranges.observe)
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


def needs_ranges(meta: dict[str, Any], precision: str, overrides: dict[str, str]) -> bool:
    """Whether any weighted layer would run quantised."""
    names = weighted_layers(meta)
    return any(get_precision(overrides.get(n, precision)).quantized for n in names)
