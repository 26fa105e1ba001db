"""Quantised copies of a model's weights on disk: `weights.<precision>.safetensors`.

A repository entry may hold, beside its float32 weights (the source of truth), copies
at fp16, int16, int8, int16g and int8g, written by `moe-alexnet quantize` (and made
again by `calibrate`, whose ranges they carry). A network built at such a precision
reads its copy layer by layer and never the float32 weights: an int8 alexnet loads
58 MiB instead of 233 (BENCHMARKS.md, "Quantised weights on disk").

Per weighted layer L (its full name: "conv1", "experts.3.fc6"), at L's precision (the
copy's, or model.json's `layer_precisions`):
- floating point: `L.weight` (float32 or float16, the float weights' shape).
- quantised: `L.weight`, the integers (int8 or int16, the same shape) as
  `Precision.quantize_weights` gives them; `L.weight_scale` (float32, one per output
  channel); `L.input_range` (float32 [2]), the calibrated range of L's input that
  the kernels quantise it with, as calibration.json has it.
- packed (int8g, int16g: kernels/bitgroups.py), a fully connected layer that packs
  smaller: `L.weight_stream` (uint16), `L.weight_offsets` (int64, rows + 1) and
  `L.weight_widths` (uint8, rows x groups) instead of `L.weight`.
- `L.bias` (float32) where the layer has one.

The header's metadata names the format, the precision, the model, the per-layer
precisions and the sha256 of the weights.safetensors the copy was made from. A copy
made from other float weights, or with input ranges other than calibration.json's, is
stale: refused with one line naming it and the command that remakes it, never used.
Its tensors are checked against model.json when the network reads them (names,
dtypes, shapes, integers within the precision, packings: `bitgroups.check`), each
failure one line naming the file and the layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from experts.model.calibration import Calibration, weighted_layers
from experts.model.model import Model, ModelError
from experts.model.tensors import TensorFile
from kernels import bitgroups
from kernels.ops.linear import choose_packing
from kernels.precision import Precision, get_precision

FORMAT = "1"
PRECISIONS = ("fp16", "int16", "int8", "int16g", "int8g")  # fp32 is the weights file
PACKED_PARTS = ("weight_stream", "weight_offsets", "weight_widths")


def copy_name(precision: str) -> str:
    return f"weights.{precision}.safetensors"


def check_copy_precision(precision: str) -> str:
    if get_precision(precision).name not in PRECISIONS:
        raise ModelError(
            f"{precision} has no quantised copy (fp32 is the weights themselves); "
            f"copies: {', '.join(PRECISIONS)}"
        )
    return precision


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_digest(path: Path) -> str:
    """sha256 of a weights file, once per (path, size, modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        found = _DIGESTS[key] = h.hexdigest()
    return found


def _layer_precisions(model: Model, precision: str) -> dict[str, str]:
    """Every weighted layer's precision in a copy at `precision` (model.json's own
    per-layer precisions over it)."""
    own = model.meta.get("layer_precisions") or {}
    return {name: own.get(name, precision) for name in weighted_layers(model.meta)}


def make_copy(model: Model, precision: str) -> bytes:
    """The copy of `model`'s weights at `precision`, as the bytes of its file."""
    check_copy_precision(precision)
    if model.path is None:
        raise ModelError(f"model {model.name!r} is not in a repository: nothing to copy")
    layers = _layer_precisions(model, precision)
    quantised = [n for n, p in layers.items() if get_precision(p).quantized]
    if quantised and model.calibration is None:
        raise ModelError(
            f"model {model.name!r} has no calibration.json, which {precision} needs: run "
            f"`moe-alexnet calibrate --model {model.name}` first"
        )
    tensors: dict[str, np.ndarray] = {}
    for name, layer_precision in layers.items():
        p = get_precision(layer_precision)
        w = model.weights[f"{name}.weight"]
        bias = model.weights.get(f"{name}.bias")
        if bias is not None:
            tensors[f"{name}.bias"] = bias
        if not p.quantized:
            tensors[f"{name}.weight"] = np.ascontiguousarray(w, p.weight_dtype)
            continue
        q, scale = p.quantize_weights(w.reshape(len(w), -1))
        packed = choose_packing(q, p, None) if w.ndim == 2 else None
        if packed is None:
            tensors[f"{name}.weight"] = q.reshape(w.shape)
        else:
            parts = (packed.stream, packed.offsets, packed.widths)
            tensors |= {f"{name}.{key}": v for key, v in zip(PACKED_PARTS, parts, strict=True)}
        tensors[f"{name}.weight_scale"] = scale
        tensors[f"{name}.input_range"] = np.array(model.calibration.ranges[name], np.float32)
    metadata = {
        "format": FORMAT,
        "precision": precision,
        "model": model.name,
        "version": model.version,
        "layer_precisions": json.dumps(layers, sort_keys=True),
        "weights_sha256": weights_digest(model.path / "weights.safetensors"),
    }
    return safetensors.numpy.save(tensors, metadata)


def existing_copies(model: Model) -> list[str]:
    """The precisions `model` has copies at."""
    if model.path is None:
        return []
    return [p for p in PRECISIONS if (model.path / copy_name(p)).is_file()]


def load_copy(
    model: Model, precision: str, layer_precisions: Mapping[str, str] | None = None
) -> CopyWeights | None:
    """The weights of `model`'s copy at `precision`, for a network built with these
    per-layer precisions over model.json's; None where the model has no such copy, or
    one made for other per-layer precisions. A stale or broken copy: a ModelError
    naming the file."""
    if model.path is None or precision not in PRECISIONS:
        return None
    path = model.path / copy_name(precision)
    if not path.is_file():
        return None
    remake = f"re-run `moe-alexnet quantize --model {model.name} --precision {precision}`"
    try:
        file = TensorFile(path)
    except ValueError as exc:
        raise ModelError(f"{path}: corrupt quantised copy: {exc}; {remake}") from exc
    md = file.metadata
    if md.get("format") != FORMAT or md.get("precision") != precision:
        raise ModelError(
            f"{path}: not a format-{FORMAT} {precision} copy (format {md.get('format')!r}, "
            f"precision {md.get('precision')!r}); {remake}"
        )
    if md.get("model") != model.name:
        raise ModelError(f"{path}: a copy of model {md.get('model')!r}; {remake}")
    if md.get("weights_sha256") != weights_digest(model.path / "weights.safetensors"):
        raise ModelError(
            f"{path} is stale: weights.safetensors changed since it was written; {remake}"
        )
    try:
        layers = json.loads(md.get("layer_precisions", ""))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: unreadable layer_precisions: {exc}; {remake}") from exc
    wanted = _layer_precisions(model, precision) | dict(layer_precisions or {})
    if layers != wanted:
        return None  # made for other per-layer precisions: the float weights serve
    return CopyWeights(model, path, file, layers, remake)


class CopyWeights(Mapping[str, Any]):
    """A copy's tensors under the names the layers read: `L.weight` (float, integer,
    or for packed rows a `bitgroups.Packed`), `L.weight_scale` and `L.bias`, each read
    from the file and checked when asked for (nothing kept: a layer's tensors go once
    its launcher has uploaded them)."""

    def __init__(
        self, model: Model, path: Path, file: TensorFile, layers: dict[str, str], remake: str
    ) -> None:
        self.path, self.file, self.layers, self.remake = path, file, layers, remake
        shapes = model.params
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, precision in layers.items():
            p = get_precision(precision)
            weight = shapes[f"{name}.weight"]
            self.shapes[f"{name}.weight"] = weight
            if f"{name}.bias" in shapes:
                self.shapes[f"{name}.bias"] = shapes[f"{name}.bias"]
            if p.quantized:
                self.shapes[f"{name}.weight_scale"] = (weight[0],)
                self._check_range(name, model.calibration)
        self._check_header()

    def _fail(self, name: str, what: str) -> ModelError:
        return ModelError(f"{self.path}: layer {name}: {what}; {self.remake}")

    def _check_range(self, name: str, calibration: Calibration | None) -> None:
        """The copy's input range of a quantised layer is calibration.json's."""
        key = f"{name}.input_range"
        if key not in self.file.shapes or self.file.shapes[key] != (2,):
            raise self._fail(name, "no input range (float32 [2])")
        have = tuple(float(v) for v in self.file.read(key))
        want = None if calibration is None else calibration.ranges.get(name)
        if want is None or not np.array_equal(np.float32(have), np.float32(want)):
            raise self._fail(
                name, f"input range {have} disagrees with calibration.json's {want} (stale)"
            )

    def _check_header(self) -> None:
        """Every tensor there, of its dtype and shape, and nothing else."""
        found = set(self.file.shapes)
        for key, shape in self.shapes.items():
            name, _, part = key.rpartition(".")
            p = get_precision(self.layers[name])
            if part == "weight" and f"{name}.weight_stream" in found:
                self._check_packed_header(name, p, shape)
                continue
            want = np.dtype(p.weight_dtype if part == "weight" else np.float32)
            if key not in found:
                raise self._fail(name, f"missing tensor {key}")
            have = (self.file.dtypes[key], self.file.shapes[key])
            if have != (want, shape):
                raise self._fail(
                    name, f"{key} is {have[0]} {have[1]}, model.json needs {want} {shape}"
                )
        known = set(self.shapes) | {f"{n}.input_range" for n in self.layers}
        known |= {f"{n}.{part}" for n in self.layers for part in PACKED_PARTS}
        extra = sorted(found - known)
        if extra:
            raise ModelError(f"{self.path}: unexpected tensors {extra}; {self.remake}")

    def _check_packed_header(self, name: str, p: Precision, shape: tuple[int, ...]) -> None:
        if not p.packed or len(shape) != 2:
            raise self._fail(name, f"packed rows, but {p.name} {shape} weights do not pack")
        missing = [part for part in PACKED_PARTS if f"{name}.{part}" not in self.file.shapes]
        if missing or f"{name}.weight" in self.file.shapes:
            raise self._fail(name, "a packed layer needs stream, offsets and widths alone")

    def __getitem__(self, key: str) -> Any:
        if key not in self.shapes:
            raise KeyError(key)
        name, _, part = key.rpartition(".")
        p = get_precision(self.layers[name])
        if part == "weight" and f"{name}.weight_stream" in self.file.shapes:
            return self._packed(name, p)
        value = self.file.read(key)
        if part == "weight" and p.quantized:
            # In the integers' own type: no wider copy of fc6's 38 MB.
            lo, hi = (int(value.min()), int(value.max())) if value.size else (0, 0)
            if max(-lo, hi) > p.weight_max:
                raise self._fail(name, f"{p.name} weights beyond +-{p.weight_max}")
        elif not np.isfinite(value).all():
            raise self._fail(name, f"{key} holds non-finite values")
        return value

    def _packed(self, name: str, p: Precision) -> bitgroups.Packed:
        m, k = self.shapes[f"{name}.weight"]
        stream, offsets, widths = (self.file.read(f"{name}.{part}") for part in PACKED_PARTS)
        try:
            packed = bitgroups.Packed(
                (m, k),
                p.bits,
                widths.astype(np.uint8, copy=False),
                offsets.astype(np.int64, copy=False),
                stream.astype(np.uint16, copy=False),
            )
            bitgroups.check(packed, "packing")
        except (ValueError, TypeError) as exc:
            raise self._fail(name, str(exc)) from exc
        return packed

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)
