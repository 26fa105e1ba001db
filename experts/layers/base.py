"""What every op declares, and the one parser of a layer's model.json keys.

An op is a frozen dataclass: its fields are its model.json keys (with their defaults),
and its methods are everything the project does with a layer of that op. The parsing,
the JSON form and the type checks of the keys are written once, here, for every op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, get_type_hints

import numpy as np

from kernels.ops import Launcher
from kernels.precision import FP32, Precision
from kernels.runtime import Device

Shape = tuple[int, ...]
Pair = tuple[int, int]
Weights = Mapping[str, np.ndarray]  # by their names in weights.safetensors: "conv1.weight"
OnnxConverter = Callable[[Any, Any], None]  # (the importer, an ONNX node)


class SpecError(ValueError):
    """A model description that cannot be run; the message names the layer."""


@dataclass(frozen=True)
class Build:
    """What a layer's launcher is built with: the device and, for layers with weights,
    their precision, the calibrated range of their input (quantised precisions), for a
    mixture's grouped experts the device buffer of their row offsets, and where int16
    and int8 of a model share their weights, the store (kernels/ops/store.py) and the
    layer's key in it (its full name); `params`: the tuner's candidate kernel
    parameters (kernels/tuning.py), instead of the device's tuning."""

    device: Device
    precision: Precision = FP32
    input_range: tuple[float, float] | None = None  # grouped experts: a list, one each
    segments: Any = None
    store: Any = None
    key: str = ""
    params: dict[str, Any] | None = None


LAYERS: dict[str, type[Layer]] = {}  # op name -> its class, in the order registered


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator of every op (experts/layers/__init__.py imports each module)."""
    LAYERS[cls.op] = cls
    return cls


@dataclass(frozen=True)
class Layer:
    """The base of every op. Subclasses add their keys as fields and override what
    applies; see experts/layers/conv.py for an op that declares everything."""

    name: str

    op: ClassVar[str] = ""
    weighted: ClassVar[bool] = False  # has weights: a precision and a calibration apply
    fuses_relu: ClassVar[bool] = False  # a relu right after it folds into it (`relu` key)
    inference_identity: ClassVar[bool] = False  # computes nothing at inference (dropout)
    dual_module: ClassVar[bool] = False  # with its ReLU fused, can skip rows (dual_launcher)
    onnx_name: ClassVar[str] = ""  # name of an unnamed imported node: conv1, pool2, ...
    onnx_numbered: ClassVar[bool] = True  # numbered by the weighted layers before it
    onnx_import: ClassVar[Mapping[str, OnnxConverter]] = {}  # ONNX op type -> converter

    # -- model.json ---------------------------------------------------------------------

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str) -> Layer:
        """A layer from its model.json object (op already resolved): every key of the
        op checked for its type, defaults filled in, then `check`ed."""
        unknown = set(doc) - {f.name for f in _fields(cls)} - {"op"}
        if unknown:
            raise SpecError(f"{where}: unknown keys {sorted(unknown)} for op {cls.op!r}")
        values: dict[str, Any] = {}
        for f in _fields(cls):
            if f.name == "name":
                continue
            if f.name in doc:
                optional = f.default is None
                values[f.name] = _parse(doc[f.name], _kind(cls, f.name), where, f.name, optional)
            elif f.default is dataclasses.MISSING:
                raise SpecError(f"{where}: missing required key {f.name!r}")
        layer = cls(name=doc["name"], **values)
        layer.check(where)
        return layer

    def to_json(self) -> dict[str, Any]:
        """The model.json object: keys that differ from their default (required keys
        and keys whose default is computed always), pairs of equal values as one int."""
        out: dict[str, Any] = {"name": self.name, "op": self.op}
        for f in _fields(type(self)):
            value = getattr(self, f.name)
            if f.name == "name" or (
                f.default not in (None, dataclasses.MISSING) and value == f.default
            ):
                continue
            if isinstance(value, tuple):
                value = value[0] if value[0] == value[1] else list(value)
            out[f.name] = value
        return out

    def check(self, where: str) -> None:
        """Rules on the values beyond their types (SpecError naming `where`)."""

    # -- shapes -------------------------------------------------------------------------

    def output_shape(self, shape: Shape) -> Shape:
        """Per-image output shape for a per-image input shape (SpecError if it does
        not fit); most ops keep the shape."""
        return shape

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """The weight tensors the layer needs, by their weights.safetensors names."""
        return {}

    def chw(self, shape: Shape) -> tuple[int, int, int]:
        """`shape` as C, H, W, or a SpecError saying the op needs one."""
        if len(shape) != 3:
            raise SpecError(f"{self.name}: {self.op} needs a CHW input, got {shape}")
        c, h, w = shape
        return c, h, w

    def tensor(self, weights: Weights, key: str) -> np.ndarray | None:
        return weights.get(f"{self.name}.{key}")

    # -- running it ---------------------------------------------------------------------

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> Launcher | None:
        """The OpenCL launcher of the layer on [C][N][H][W] (or [N][features]) buffers;
        None where the output is the input."""
        raise NotImplementedError(f"{self.op}: no launcher")

    @property
    def takes_little_module(self) -> bool:
        """Dual-module inference applies: an op with a dual-module kernel whose ReLU is
        fused (the outputs ReLU zeroes are the ones a little module can rule out)."""
        return self.dual_module and bool(getattr(self, "relu", False))

    def dual_launcher(self, build: Build, big: Launcher, little: Any) -> Launcher:
        """Dual-module inference (experts/model/dual_module.py): `big`, the layer's own
        launcher, shared, run for the outputs `little` (a `Little`) cannot rule out."""
        raise SpecError(f"{self.name}: {self.op} has no dual-module kernel")

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        """The numpy twin on NCHW (or N x features) float32: the oracle of the tests."""
        raise NotImplementedError(f"{self.op}: no numpy twin")

    def torch_module(self, in_shape: Shape) -> Any:
        """The PyTorch module for training (imports torch: the `train` extra)."""
        raise NotImplementedError(f"{self.op}: no PyTorch module")

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        """Add the layer to an ONNX graph being built (experts/onnx/export.py) after
        tensor `x` of per-image `shape`; returns the name of its output tensor."""
        raise NotImplementedError(f"{self.op}: no ONNX export")


# -- the key parser ---------------------------------------------------------------------


@cache
def _fields(cls: type[Layer]) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls)


@cache
def _kind(cls: type[Layer], key: str) -> str:
    """What a key holds, from its annotation: "pair", "int", "float" or "bool"."""
    hint = get_type_hints(cls)[key]
    if hint in (Pair, Pair | None):
        return "pair"
    return {int: "int", float: "float", bool: "bool"}[hint]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse(value: Any, kind: str, where: str, key: str, optional: bool) -> Any:
    if kind == "pair":
        if value is None and optional:  # computed from other keys (a pool's stride)
            return None
        if _is_int(value):
            return (value, value)
        if isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_int, value)):
            return (value[0], value[1])
        raise SpecError(f"{where}: {key} must be an int or a pair of ints, got {value!r}")
    if kind == "int" and _is_int(value):
        return value
    if kind == "float" and (_is_int(value) or isinstance(value, float)) and math.isfinite(value):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    what = {"int": "an integer", "float": "a finite number", "bool": "true or false"}[kind]
    raise SpecError(f"{where}: {key} must be {what}, got {value!r}")


def readable_float(value: float) -> float:
    """A float32 value (an ONNX attribute) as the shortest decimal that is the same
    float32 (1e-4, not 9.999999747378752e-05), so model.json stays readable."""
    return float(str(np.float32(value)))


def positive(layer: Layer, where: str, *keys: str) -> None:
    """Each key (an int or a pair) is at least 1."""
    for key in keys:
        value = getattr(layer, key)
        if min(value if isinstance(value, tuple) else (value,)) < 1:
            raise SpecError(f"{where}: {key} must be >= 1, got {value}")
