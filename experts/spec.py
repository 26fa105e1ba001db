"""Layer specs: a network is a JSON list of layer dicts, checked and shape-inferred here.

This module is pure Python (no OpenCL): the model repository, the ONNX importer and
exporter, the numpy reference and the OpenCL network all read the same spec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kernels.geometry import conv_out, pool_out

# What each op accepts beyond "name" and "op", with defaults (None: required).
OPS: dict[str, dict[str, Any]] = {
    "conv": {
        "out_channels": None,
        "kernel": None,
        "stride": 1,
        "padding": 0,
        "groups": 1,
        "relu": False,
        "bias": True,
    },
    "maxpool": {"kernel": None, "stride": None, "padding": 0, "ceil_mode": False},
    "avgpool": {
        "kernel": None,
        "stride": None,
        "padding": 0,
        "ceil_mode": False,
        "count_include_pad": True,
    },
    "adaptive_avgpool": {"output_size": None},
    "lrn": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0},
    "relu": {},
    "dropout": {"ratio": 0.5},
    "flatten": {},
    "linear": {"out_features": None, "relu": False, "bias": True},
    "softmax": {},
}
PAIR_KEYS = ("kernel", "stride", "padding", "output_size")


class SpecError(ValueError):
    """A model description that cannot be run; the message names the layer."""


def _pair(value: Any, where: str, key: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (value[0], value[1])
    raise SpecError(f"{where}: {key} must be an int or a pair of ints, got {value!r}")


def normalise_layer(layer: dict[str, Any], index: int) -> dict[str, Any]:
    """Return a copy of `layer` with defaults filled in and pairs expanded."""
    if not isinstance(layer, dict):
        raise SpecError(f"layer {index}: expected an object, got {type(layer).__name__}")
    name = layer.get("name", f"layer{index}")
    where = f"layer {index} ({name})"
    op = layer.get("op")
    if op not in OPS:
        raise SpecError(f"{where}: unknown op {op!r}; supported: {', '.join(OPS)}")
    allowed = OPS[op]
    unknown = set(layer) - set(allowed) - {"name", "op"}
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)} for op {op!r}")
    out: dict[str, Any] = {"name": name, "op": op}
    for key, default in allowed.items():
        if key in layer:
            value = layer[key]
        elif default is None and not (op in ("maxpool", "avgpool") and key == "stride"):
            raise SpecError(f"{where}: missing required key {key!r}")
        else:
            value = default
        if value is None:  # pooling stride defaults to the kernel size
            value = layer["kernel"]
        out[key] = _pair(value, where, key) if key in PAIR_KEYS else value
    _check_values(out, where)
    return out


def _check_values(layer: dict[str, Any], where: str) -> None:
    op = layer["op"]
    positive = [k for k in ("kernel", "stride", "output_size") if k in layer]
    for key in positive:
        if min(layer[key]) < 1:
            raise SpecError(f"{where}: {key} must be >= 1, got {layer[key]}")
    if "padding" in layer and min(layer["padding"]) < 0:
        raise SpecError(f"{where}: padding must be >= 0, got {layer['padding']}")
    if op in ("maxpool", "avgpool"):
        if any(p * 2 > k for p, k in zip(layer["padding"], layer["kernel"], strict=True)):
            raise SpecError(f"{where}: padding must be at most half the kernel size")
    if op == "conv" and (layer["out_channels"] < 1 or layer["groups"] < 1):
        raise SpecError(f"{where}: out_channels and groups must be >= 1")
    if op == "conv" and layer["out_channels"] % layer["groups"]:
        raise SpecError(f"{where}: out_channels {layer['out_channels']} not divisible by groups")
    if op == "linear" and layer["out_features"] < 1:
        raise SpecError(f"{where}: out_features must be >= 1")
    if op == "lrn" and (layer["size"] < 1 or layer["k"] <= 0 or layer["beta"] < 0):
        raise SpecError(f"{where}: lrn needs size >= 1, k > 0 and beta >= 0")


def output_shape(layer: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-image output shape of a normalised layer given its per-image input shape."""
    op, name = layer["op"], layer["name"]
    if op in ("relu", "dropout", "lrn", "softmax"):
        if op == "lrn" and len(shape) != 3:
            raise SpecError(f"{name}: lrn needs a CHW input, got {shape}")
        return shape
    if op == "flatten":
        return (math.prod(shape),)
    if op == "linear":
        if len(shape) != 1:
            raise SpecError(f"{name}: linear needs a flat input, got {shape}; add a flatten")
        return (layer["out_features"],)
    if len(shape) != 3:
        raise SpecError(f"{name}: {op} needs a CHW input, got {shape}")
    c, h, w = shape
    if op == "conv":
        if c % layer["groups"]:
            raise SpecError(f"{name}: {c} input channels not divisible by groups")
        kh, kw = layer["kernel"]
        sh, sw = layer["stride"]
        ph, pw = layer["padding"]
        oh, ow = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise SpecError(f"{name}: kernel {layer['kernel']} larger than input {h}x{w}")
        return (layer["out_channels"], oh, ow)
    if op in ("maxpool", "avgpool"):
        kh, kw = layer["kernel"]
        sh, sw = layer["stride"]
        ph, pw = layer["padding"]
        oh = pool_out(h, kh, sh, ph, layer["ceil_mode"])
        ow = pool_out(w, kw, sw, pw, layer["ceil_mode"])
        if oh < 1 or ow < 1:
            raise SpecError(f"{name}: pooling window larger than input {h}x{w}")
        return (c, oh, ow)
    if op == "adaptive_avgpool":
        return (c, *layer["output_size"])
    raise SpecError(f"{name}: no shape rule for op {op!r}")  # pragma: no cover


def param_shapes(layer: dict[str, Any], in_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Weight tensors a layer needs, keyed by their name in weights.safetensors."""
    name = layer["name"]
    if layer["op"] == "conv":
        kh, kw = layer["kernel"]
        shapes = {f"{name}.weight": (layer["out_channels"], in_shape[0] // layer["groups"], kh, kw)}
        if layer["bias"]:
            shapes[f"{name}.bias"] = (layer["out_channels"],)
        return shapes
    if layer["op"] == "linear":
        shapes = {f"{name}.weight": (layer["out_features"], in_shape[0])}
        if layer["bias"]:
            shapes[f"{name}.bias"] = (layer["out_features"],)
        return shapes
    return {}


def normalise_layers(layers: Any) -> list[dict[str, Any]]:
    if not isinstance(layers, list) or not layers:
        raise SpecError("layers must be a non-empty list")
    out = [normalise_layer(layer, i) for i, layer in enumerate(layers)]
    names = [layer["name"] for layer in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"duplicate layer names: {dupes}")
    return out


def infer_shapes(layers: list[dict[str, Any]], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-image output shape of every layer, in order; raises SpecError on a mismatch."""
    shape = tuple(int(s) for s in input_shape)
    shapes = []
    for layer in layers:
        shape = output_shape(layer, shape)
        shapes.append(shape)
    return shapes


def expected_params(
    layers: list[dict[str, Any]], input_shape: Sequence[int]
) -> dict[str, tuple[int, ...]]:
    """Every weight tensor the network needs, with its shape."""
    shape = tuple(int(s) for s in input_shape)
    params: dict[str, tuple[int, ...]] = {}
    for layer in layers:
        params.update(param_shapes(layer, shape))
        shape = output_shape(layer, shape)
    return params
