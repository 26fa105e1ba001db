"""A model in memory: its model.json metadata and float32 weights, checked against
each other once (`validate`), so the network code can trust a `Model`: a bad file
becomes a `ModelError` naming the model and the part at fault instead of a shape
error deep inside a kernel launch. The repository on disk is experts/model/repository.py.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from experts.layers import Layer, SpecError
from experts.model.calibration import Calibration, CalibrationError, merge_layer_precisions
from experts.model.dual_module import DualModule
from experts.model.mixture import MixtureSpec, is_mixture, mixture_params, mixture_spec
from experts.model.spec import expected_params, infer_shapes, parse_layers
from experts.model.tensors import LazyWeights, TensorFile

FORMAT = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COLORS = {1: "L", 3: "RGB"}
INPUT_KEYS = {"shape", "layout", "color", "resize", "mean", "std"}
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class ModelError(ValueError):
    """A model that cannot be loaded, saved or run; the message names the model and
    the part at fault (file, layer or tensor)."""


# -- the in-memory model --------------------------------------------------------------


@dataclass
class Model:
    """A validated model: its normalised metadata, float32 weights, and the folder it
    came from (None for models built in memory)."""

    meta: dict[str, Any]
    weights: MutableMapping[str, np.ndarray]  # a dict, or read lazily (`lazy_weights`)
    path: Path | None = None
    calibration: Calibration | None = None  # calibration.json, checked against the model
    dual_module: DualModule | None = None  # dual-module.safetensors, checked likewise

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "1"))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = (int(s) for s in self.meta["input"]["shape"])
        return (c, h, w)

    @property
    def is_mixture(self) -> bool:
        return is_mixture(self.meta)

    @cached_property
    def mixture(self) -> MixtureSpec:
        """The checked parts of a mixture of experts (a ModelError for other models)."""
        if not self.is_mixture:
            raise ModelError(f"model {self.name!r} is not a mixture of experts")
        return mixture_spec(self.meta)

    @cached_property
    def layers(self) -> list[Layer]:
        """The layers of a plain network (a ModelError for a mixture: see `mixture`)."""
        if self.is_mixture:
            raise ModelError(f"model {self.name!r} is a mixture of experts: see its parts")
        return parse_layers(self.meta["layers"])

    @cached_property
    def num_classes(self) -> int:
        if self.is_mixture:
            return self.mixture.num_classes
        return math.prod(infer_shapes(self.layers, self.input_shape)[-1])

    @property
    def labels(self) -> list[str]:
        """One label per class; the class indices as strings when the model has none."""
        labels = self.meta.get("labels")
        if labels is None:
            return [str(i) for i in range(self.num_classes)]
        return list(labels)

    @cached_property
    def params(self) -> dict[str, tuple[int, ...]]:
        """Every weight tensor the model needs, with its shape (from model.json alone)."""
        if self.is_mixture:
            return mixture_params(self.meta)
        return expected_params(self.layers, self.input_shape)

    @property
    def weight_bytes(self) -> int:
        return sum(int(w.nbytes) for w in self.weights.values())


# -- validation -----------------------------------------------------------------------


def check_name(name: Any, where: str = "model") -> str:
    """Model names become folder names: keep them to a portable, traversal-free set."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ModelError(
            f"{where}: invalid model name {name!r}: use 1 to 64 letters, digits, '.', '_' "
            f"or '-', starting with a letter or digit"
        )
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_input(spec: Any, where: str) -> dict[str, Any]:
    """The `input` block, with layout, colour and resize defaults filled in."""
    if not isinstance(spec, dict):
        raise ModelError(f"{where}: 'input' must be an object, got {type(spec).__name__}")
    unknown = set(spec) - INPUT_KEYS
    if unknown:
        raise ModelError(f"{where}: input: unknown keys {sorted(unknown)}")
    shape = spec.get("shape")
    if (
        not (isinstance(shape, list | tuple) and len(shape) == 3 and all(_is_int(s) for s in shape))
        or min(shape) < 1
    ):
        raise ModelError(f"{where}: input.shape must be 3 positive ints [C, H, W], got {shape!r}")
    c = shape[0]
    if c not in COLORS:
        raise ModelError(f"{where}: input.shape has {c} channels; supported: 1 (L) or 3 (RGB)")
    out = dict(spec, shape=list(shape))
    out["layout"] = spec.get("layout", "NCHW")
    if out["layout"] != "NCHW":
        raise ModelError(f"{where}: input.layout must be 'NCHW', got {out['layout']!r}")
    out["color"] = spec.get("color", COLORS[c])
    if out["color"] != COLORS[c]:
        raise ModelError(
            f"{where}: input.color {out['color']!r} does not fit {c} channel(s); "
            f"expected {COLORS[c]!r}"
        )
    resize = spec.get("resize")
    if resize is not None and not (_is_int(resize) and resize >= 1):
        raise ModelError(f"{where}: input.resize must be a positive int or null, got {resize!r}")
    out["resize"] = resize
    for key in ("mean", "std"):
        values = spec.get(key)
        if not (isinstance(values, list | tuple) and all(_is_number(v) for v in values)):
            raise ModelError(
                f"{where}: input.{key} must be a list of finite numbers, got {values!r}"
            )
        if len(values) != c:
            raise ModelError(f"{where}: input.{key} has {len(values)} values, expected {c}")
        out[key] = [float(v) for v in values]
    if min(out["std"]) <= 0:
        raise ModelError(f"{where}: input.std must be > 0, got {out['std']}")
    return out


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    """Top-level keys and the input block; layers are checked by `_check_layers`."""
    if not isinstance(meta, dict):
        raise ModelError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    if "format" not in meta:
        raise ModelError(f"{where}: missing required key 'format'")
    if meta["format"] != FORMAT:
        raise ModelError(
            f"{where}: unsupported format {meta['format']!r}; this version reads format {FORMAT}"
        )
    required = ("name", "input") + (() if is_mixture(meta) else ("layers",))
    for key in required:
        if key not in meta:
            raise ModelError(f"{where}: missing required key {key!r}")
    out = copy.deepcopy(meta)
    out["name"] = check_name(meta["name"], where)
    version = meta.get("version", "1")
    if not (isinstance(version, str) or _is_int(version)):
        raise ModelError(f"{where}: version must be a string, got {version!r}")
    out["version"] = str(version)
    out["input"] = _check_input(meta["input"], where)
    return out


def _check_layers(meta: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """Layers must shape-check to a flat class vector; returns the expected tensors."""
    if is_mixture(meta):
        try:
            spec = mixture_spec(meta)
            params = mixture_params(meta)
        except SpecError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        _check_labels(meta, spec.num_classes, where)
        return params
    try:
        layers = parse_layers(meta["layers"])
        shapes = infer_shapes(layers, meta["input"]["shape"])
        params = expected_params(layers, meta["input"]["shape"])
    except SpecError as exc:
        raise ModelError(f"{where}: layers: {exc}") from exc
    if len(shapes[-1]) != 1:
        raise ModelError(
            f"{where}: layers: the network must end in a flat class vector, but the last "
            f"layer ({layers[-1].name}) outputs {shapes[-1]}; add flatten/linear layers"
        )
    _check_labels(meta, shapes[-1][0], where)
    return params


def _check_labels(meta: dict[str, Any], classes: int, where: str) -> None:
    labels = meta.get("labels")
    if labels is not None:
        if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ModelError(f"{where}: labels must be a list of strings")
        if len(labels) != classes:
            raise ModelError(
                f"{where}: labels has {len(labels)} entries but the network has {classes} classes"
            )


def _check_tensor(key: str, value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """One weight tensor: the right shape, floating point (made float32), all finite."""
    if not isinstance(value, np.ndarray):
        raise ModelError(f"{where}: tensor {key!r} is a {type(value).__name__}, not an array")
    if value.dtype not in FLOAT_DTYPES:
        raise ModelError(f"{where}: tensor {key!r} has dtype {value.dtype}, expected float32")
    if value.shape != shape:
        raise ModelError(f"{where}: tensor {key!r} has shape {value.shape}, expected {shape}")
    with np.errstate(over="ignore"):  # float64 overflow to inf is caught just below
        value = np.ascontiguousarray(value, dtype=np.float32)
    if not np.isfinite(value).all():
        bad = int(np.count_nonzero(~np.isfinite(value)))
        raise ModelError(f"{where}: tensor {key!r} has {bad} non-finite values (NaN or inf)")
    return value


def _check_weights(weights: Any, params: dict[str, tuple[int, ...]], where: str) -> None:
    if not isinstance(weights, dict | LazyWeights):
        raise ModelError(f"{where}: weights must be a dict of arrays")
    missing = [k for k in params if k not in weights]
    if missing:
        raise ModelError(f"{where}: missing weight tensors {missing}")
    extra = sorted(set(weights) - set(params))
    if extra:
        raise ModelError(f"{where}: unexpected weight tensors {extra} (no layer uses them)")
    if isinstance(weights, LazyWeights):  # the header now, each tensor's values when read
        file = weights.file
        for key, shape in params.items():
            if file.dtypes[key] not in FLOAT_DTYPES:
                raise ModelError(
                    f"{where}: tensor {key!r} has dtype {file.dtypes[key]}, expected float32"
                )
            if file.shapes[key] != shape:
                raise ModelError(
                    f"{where}: tensor {key!r} has shape {file.shapes[key]}, expected {shape}"
                )
        return
    for key, shape in params.items():
        weights[key] = _check_tensor(key, weights[key], shape, where)


def lazy_weights(file: TensorFile, where: str) -> LazyWeights:
    """A weights file's tensors, read (made float32 and checked finite) on first use;
    `validate` checks the names, dtypes and shapes from its header."""

    def check(key: str, value: np.ndarray) -> np.ndarray:
        return _check_tensor(key, value, file.shapes[key], where)

    return LazyWeights(file, check)


def validate(meta: Any, weights: dict[str, np.ndarray], where: str) -> dict[str, Any]:
    """Check metadata and weights against each other; return the normalised metadata
    (a copy, with defaults filled in).

    Float16/float64 tensors are converted to contiguous float32 *in place* in `weights`,
    so after this call the dict is exactly what the networks and `save` expect (weights
    read lazily from a file, `lazy_weights`, are checked and converted when read).
    `where` names the model in every message ("model 'alexnet'", "built-in alexnet").
    """
    out = _check_meta(meta, where)
    params = _check_layers(out, where)
    _check_weights(weights, params, where)
    try:
        merge_layer_precisions(out)  # model.json's per-layer precisions name real layers
    except CalibrationError as exc:
        raise ModelError(f"{where}: {exc}") from exc
    return out
