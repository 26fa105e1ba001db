"""Calibration files for the quantised precisions, and per-layer precision maps.

int8 and int16 quantise each conv/linear layer's input with a scale and zero point
taken from the range that input covers on sample images (kernels/precision.py).
Those ranges are measured by experts/networks/calibrate.py and kept beside the
weights in `calibration.json`:

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from experts.layers import Layer, SpecError
from experts.model.mixture import is_mixture, mixture_spec
from experts.model.spec import parse_layers
from kernels.precision import get_precision

CALIBRATION_FILE = "calibration.json"


class CalibrationError(SpecError):
    """A calibration or per-layer precision map that does not fit the model."""


def weighted_layers(meta: dict[str, Any]) -> list[str]:
    """Names of the layers that have weights (conv, linear): the ones a precision
    applies to, in order; a mixture's carry their part's prefix."""

    def names(layers: list[Layer], prefix: str = "") -> list[str]:
        return [f"{prefix}{layer.name}" for layer in layers if layer.weighted]

    if not is_mixture(meta):
        return names(parse_layers(meta["layers"]))
    spec = mixture_spec(meta)
    return [
        *names(spec.stem, "stem."),
        *names(spec.gate, "gate."),
        *(n for i in range(spec.experts) for n in names(spec.expert, f"experts.{i}.")),
        *names(spec.head, "head."),
    ]


def parse_layer_precisions(text: str) -> dict[str, str]:
    """A per-layer map as flags and settings write it: "conv1=fp32,fc8=fp16" ->
    {"conv1": "fp32", "fc8": "fp16"}; precisions checked here, names later, against
    the model."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, precision = item.partition("=")
        if not sep or not name.strip():
            raise CalibrationError(f"layer precision {item!r}: expected LAYER=PRECISION")
        out[name.strip()] = _checked(name.strip(), precision.strip())
    return out


def _checked(layer: str, precision: Any) -> str:
    if not isinstance(precision, str):
        raise CalibrationError(
            f"layer precision for {layer!r}: expected a precision name, got {precision!r}"
        )
    try:
        return get_precision(precision).name
    except ValueError as exc:
        raise CalibrationError(f"layer precision for {layer!r}: {exc}") from None


def merge_layer_precisions(
    meta: dict[str, Any], layer_precisions: dict[str, str] | None = None
) -> dict[str, str]:
    """The model's own per-layer precisions (model.json `layer_precisions`) with
    `layer_precisions` (a flag's or setting's) on top, every name and precision
    checked: a CalibrationError before any work starts."""
    merged = {**(meta.get("layer_precisions") or {}), **(layer_precisions or {})}
    known = weighted_layers(meta)
    for name, precision in merged.items():
        if name not in known:
            raise CalibrationError(
                f"layer precision for {name!r}: the model {meta['name']!r} has no conv or "
                f"linear layer of that name; layers: {', '.join(known)}"
            )
        _checked(name, precision)
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
                raise CalibrationError(
                    f"{where}: range of {name} must be [low, high], got {value!r}"
                )
            out[name] = (float(value[0]), float(value[1]))
        return cls(
            out,
            str(doc.get("method", "minmax")),
            int(doc.get("samples", 0)),
            str(doc.get("source", "")),
        )


def needs_ranges(meta: dict[str, Any], precision: str, layer_precisions: dict[str, str]) -> bool:
    """Whether any weighted layer would run quantised."""
    names = weighted_layers(meta)
    return any(get_precision(layer_precisions.get(n, precision)).quantized for n in names)
