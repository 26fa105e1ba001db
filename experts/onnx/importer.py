"""ONNX -> model.json + weights: bring a user's AlexNet-family classifier into the engine.

Only graphs the engine computes exactly are accepted: a single chain of supported ops
from the image input to the scores. Each op's converters live with the op (the
`onnx_import` of its class in experts/layers); this walker gives them the helpers
below. Anything else raises `OnnxImportError` naming the node, its op type, the
offending attribute or value and what is supported, so that a model never imports
as a silently different network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from experts.layers import LAYERS, Layer, SpecError
from experts.model.spec import expected_params
from experts.onnx.errors import OnnxImportError
from experts.onnx.graph import (
    DEFAULT_DOMAINS,
    chain,
    constants,
    consumers,
    default_opset,
    describe,
    graph_input,
    graph_output,
)

FLOAT_DTYPES = (np.float32, np.float16, np.float64)


def _int_or_pair(values: list[int] | tuple[int, ...]) -> int | list[int]:
    a, b = (int(v) for v in values)
    return a if a == b else [a, b]


class Importer:
    """Walks the chain node by node; a node's converter reads the current per-image
    `shape`, checks the node with the helpers here and emits layers (with their
    weights) through `emit`."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.opset = default_opset(model)
        self.consts = constants(graph)
        self.input_name, self.batch, self.shape = graph_input(graph)
        self.output_name = graph_output(graph)
        nodes = [n for n in graph.node if n.op_type != "Constant"]
        self.consumers = consumers(nodes, self.consts)
        self.chain = chain(nodes, self.consts, self.consumers, self.input_name, self.output_name)
        self.input_shape = self.shape
        self.pos = 0
        self.layers: list[Layer] = []
        self.weights: dict[str, np.ndarray] = {}
        self.used_names: set[str] = set()
        self.weighted = 0  # weighted layers so far, for conv1/fc6-style names
        self.fusable = False  # the previous node emitted a layer a relu can fold into

    # -- walking -----------------------------------------------------------------------

    def run(self) -> None:
        while self.pos < len(self.chain):
            node = self.take()
            convert = CONVERTERS.get(node.op_type)
            if not self.is_default_domain(node) or convert is None:
                raise OnnxImportError(
                    f"{describe(node)}: op {node.domain + '.' if node.domain else ''}"
                    f"{node.op_type} is not supported; supported ops: "
                    f"{', '.join(sorted(CONVERTERS))}"
                )
            count = len(self.layers)
            convert(self, node)
            emitted = len(self.layers) > count
            self.fusable = emitted and self.layers[-1].fuses_relu
        if not self.layers:
            raise OnnxImportError("the graph computes nothing the engine can run (no layers)")

    def take(self) -> onnx.NodeProto:
        self.pos += 1
        return self.chain[self.pos - 1]

    def peek(self) -> onnx.NodeProto | None:
        return self.chain[self.pos] if self.pos < len(self.chain) else None

    @staticmethod
    def is_default_domain(node: onnx.NodeProto) -> bool:
        return node.domain in DEFAULT_DOMAINS

    def data_index(self, node: onnx.NodeProto) -> int:
        """Position of the (single) computed input of a chain node."""
        return next(i for i, name in enumerate(node.input) if name and name not in self.consts)

    def expect_data_first(self, node: onnx.NodeProto) -> None:
        if self.data_index(node) != 0:
            raise self.error(
                node, f"the image data must be input 0, got it as input {self.data_index(node)}"
            )

    def need_rank(self, node: onnx.NodeProto, per_image: int) -> None:
        if len(self.shape) != per_image:
            raise self.error(
                node,
                f"needs a {per_image + 1}-D input"
                f"{' (NCHW)' if per_image == 3 else ''}, got {self.dims()}",
            )

    def dims(self) -> str:
        """The current shape as "N x C x H x W"."""
        return " x ".join(["N", *map(str, self.shape)])

    # -- errors ------------------------------------------------------------------------

    @staticmethod
    def error(node: onnx.NodeProto, message: str) -> OnnxImportError:
        return OnnxImportError(f"{describe(node)}: {message}")

    def reject(self, node: onnx.NodeProto, attr: str, value: Any, supported: str) -> Exception:
        return self.error(node, f"{attr}={value} is not supported; {supported}")

    # -- constants and attributes ------------------------------------------------------

    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            raise self.error(
                node,
                f"{what} (input {index}, {name!r}) must be a constant "
                f"(an initializer or a Constant node)",
            )
        return self.consts[name]

    def weight(
        self,
        node: onnx.NodeProto,
        index: int,
        what: str,
        ndim: int | None = None,
        required: bool = False,
    ) -> np.ndarray | None:
        """A float weight as float32, or None when the optional input is absent."""
        value = self.const(node, index, what)
        if value is None:
            if required:
                raise self.error(node, f"{what} (input {index}) is missing")
            return None
        if value.dtype not in FLOAT_DTYPES:
            raise self.error(
                node,
                f"{what} {node.input[index]!r} has dtype {value.dtype}; "
                f"only float32 weights (or float16/float64, converted) are "
                f"supported",
            )
        if ndim is not None and value.ndim != ndim:
            raise self.error(
                node,
                f"{what} {node.input[index]!r} has shape {value.shape}; expected {ndim} dimensions",
            )
        return np.array(value, dtype=np.float32)

    def attrs(self, node: onnx.NodeProto, allowed: set[str]) -> dict[str, Any]:
        """The node's attributes; any not in `allowed` is refused."""
        attrs = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
        unknown = sorted(set(attrs) - allowed)
        if unknown:
            raise self.error(
                node, f"attributes {unknown} are not supported; supported: {sorted(allowed)}"
            )
        return attrs

    def pair_attr(
        self, node: onnx.NodeProto, attrs: dict[str, Any], key: str, default: int
    ) -> int | list[int]:
        value = list(attrs.get(key, [default, default]))
        if len(value) != 2:
            raise self.reject(node, key, value, "only 2-D (two values) is supported")
        return _int_or_pair(value)

    def window(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, Any]:
        """stride and symmetric padding of a 2-D conv/pool; dilations must be 1."""
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise self.reject(node, "dilations", list(attrs["dilations"]), "only 1 is supported")
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            raise self.reject(
                node, "auto_pad", auto_pad, "only NOTSET (explicit pads) or VALID is supported"
            )
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if auto_pad == "VALID" and any(pads):
            raise self.reject(node, "pads", pads, "pads must be absent with auto_pad=VALID")
        if len(pads) != 4:
            raise self.reject(node, "pads", pads, "only 2-D pads (four values) are supported")
        if pads[:2] != pads[2:]:
            raise self.reject(
                node,
                "pads",
                pads,
                "only symmetric padding (top == bottom, left == right) is supported",
            )
        return {
            "stride": self.pair_attr(node, attrs, "strides", 1),
            "padding": _int_or_pair(pads[:2]),
        }

    # -- output ------------------------------------------------------------------------

    def layer_name(self, node: onnx.NodeProto, cls: type[Layer]) -> str:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", node.name).strip("_")
        if not base:  # caffe style: conv1, pool1, norm1, ..., fc6, drop6, prob
            base = f"{cls.onnx_name}{self.weighted}" if cls.onnx_numbered else cls.onnx_name
        name, i = base, 2
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def emit(
        self,
        node: onnx.NodeProto,
        cls: type[Layer],
        keys: dict[str, Any],
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
    ) -> None:
        """Append a layer of op `cls` named after `node`, its keys checked as
        model.json's are; moves the current shape on."""
        if cls.weighted:
            self.weighted += 1
        name = self.layer_name(node, cls)
        try:
            layer = cls.from_json({"name": name, **keys}, f"layer {len(self.layers)} ({name})")
            self.shape = layer.output_shape(self.shape)
        except SpecError as exc:
            raise self.error(node, str(exc)) from exc
        self.layers.append(layer)
        if weight is not None:
            self.weights[f"{name}.weight"] = weight
        if bias is not None:
            self.weights[f"{name}.bias"] = bias

    def fuse_relu(self, node: onnx.NodeProto) -> bool:
        """Fold a Relu into the layer the previous node emitted, where it can take one
        and nothing else reads that layer's output; whether it did."""
        source = node.input[0]
        alone = len(self.consumers[source]) == 1 and source != self.output_name
        if self.fusable and alone and not self.layers[-1].relu:
            self.layers[-1] = replace(self.layers[-1], relu=True)
            return True
        return False

    def meta(self, source: str, name: str, labels: list[str] | None) -> dict[str, Any]:
        c, h, w = self.input_shape
        rgb = c == 3
        meta: dict[str, Any] = {
            "format": 1,
            "name": name,
            "version": "1",
            "description": f"imported from {source}",
            "input": {
                "shape": [c, h, w],
                "layout": "NCHW",
                "color": "RGB" if rgb else "L",
                "resize": None if h < 64 else round(h * 256 / 224),
                "mean": [0.485, 0.456, 0.406] if rgb else [0.5],
                "std": [0.229, 0.224, 0.225] if rgb else [0.5],
            },
        }
        if labels:
            classes = math.prod(self.shape)
            if len(labels) != classes:
                raise OnnxImportError(
                    f"{len(labels)} labels given, the network has {classes} outputs"
                )
            meta["labels"] = list(labels)
        meta["layers"] = [layer.to_json() for layer in self.layers]
        return meta


# -- nodes that are not layers ----------------------------------------------------------


def _add(imp: Importer, node: onnx.NodeProto) -> None:
    raise imp.error(node, "Add is only supported as the bias right after a MatMul")


def _slice(imp: Importer, node: onnx.NodeProto) -> None:
    """Accept only a slice that keeps everything the engine computes, like the trim
    ONNX export puts after a ceil-mode pool."""
    imp.attrs(node, set())
    imp.expect_data_first(node)
    starts, ends, axes, steps = (
        [] if (v := imp.const(node, i, what)) is None else [int(x) for x in v.reshape(-1)]
        for i, what in enumerate(("starts", "ends", "axes", "steps"), start=1)
    )
    rank = len(imp.shape) + 1
    axes = [a % rank for a in axes] if axes else list(range(len(starts)))
    steps = steps or [1] * len(axes)
    full = (2**31 - 1, *imp.shape)  # the batch is unknown: only "to the end" keeps it
    keeps_all = len(starts) == len(ends) == len(axes) == len(steps) and all(
        s == 0 and st == 1 and e >= full[a]
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True)
    )
    if not keeps_all:
        raise imp.error(
            node,
            f"starts={starts} ends={ends} axes={axes} steps={steps} is not "
            f"supported; only a slice that keeps the whole {imp.dims()} tensor "
            "is",
        )


def _identity(imp: Importer, node: onnx.NodeProto) -> None:
    imp.attrs(node, set())


Converter = Callable[[Importer, onnx.NodeProto], None]
CONVERTERS: dict[str, Converter] = {
    **{op: convert for cls in LAYERS.values() for op, convert in cls.onnx_import.items()},
    "Add": _add,
    "Slice": _slice,
    "Identity": _identity,
}


def _load(path_or_model: str | PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, f"ONNX graph {path_or_model.graph.name!r}"
    try:
        return onnx.load(str(path_or_model)), Path(path_or_model).name
    except Exception as exc:  # onnx raises protobuf and OS errors alike
        raise OnnxImportError(f"cannot read ONNX model {str(path_or_model)!r}: {exc}") from exc


def import_onnx(
    path_or_model: str | PathLike[str] | onnx.ModelProto,
    name: str,
    labels: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Convert an AlexNet-family ONNX classifier to (model.json dict, weights).

    Anything the engine cannot compute exactly raises `OnnxImportError` instead of
    importing differently.
    """
    model, source = _load(path_or_model)
    imp = Importer(model)
    imp.run()
    meta = imp.meta(source, name, labels)
    want = expected_params(imp.layers, imp.input_shape)
    got = {key: value.shape for key, value in imp.weights.items()}
    if got != want:  # a converter bug, never the user's model
        raise OnnxImportError(f"internal error: weights {got} do not match the layers {want}")
    return meta, imp.weights
