"""ONNX -> model.json + weights: bring a user's AlexNet-family classifier into the engine.

Only graphs the engine computes exactly are accepted: a single chain of supported ops
from the image input to the scores. Anything else raises `OnnxImportError` naming the
node, its op type, the offending attribute or value and what is supported, so that a
model never imports as a silently different network.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from experts.onnx_export import adaptive_matrix
from experts.spec import OPS, SpecError, expected_params, normalise_layer, normalise_layers
from experts.spec import output_shape as spec_output_shape

MIN_OPSET, MAX_OPSET = 11, 21
DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_DTYPES = (np.float32, np.float16, np.float64)
# names for unnamed nodes, numbered by the conv/linear layers so far
NUMBERED_NAMES = {
    "conv": "conv",
    "linear": "fc",
    "maxpool": "pool",
    "avgpool": "pool",
    "adaptive_avgpool": "pool",
    "lrn": "norm",
    "relu": "relu",
    "dropout": "drop",
}


class OnnxImportError(ValueError):
    """An ONNX model the engine cannot run exactly; the message says where and why."""


def _describe(node: onnx.NodeProto) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    return f"unnamed {node.op_type} node (output {node.output[0]!r})"


def _dims(shape: tuple[int, ...]) -> str:
    return " x ".join(["N", *map(str, shape)])


def _clean_float(value: float) -> float:
    """float32 attribute -> the shortest decimal that is the same float32 (1e-4, not
    9.999999747378752e-05), so model.json stays readable."""
    return float(str(np.float32(value)))


def _int_or_pair(values: list[int] | tuple[int, ...]) -> int | list[int]:
    a, b = (int(v) for v in values)
    return a if a == b else [a, b]


class _Importer:
    """Walks the chain node by node; converters read the current per-image shape and
    emit layers (with their weights) through `emit`."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.opset = _default_opset(model)
        self.consts = _constants(self.graph)
        self.input_name, self.batch, self.shape = _graph_input(self.graph)
        self.output_name = _graph_output(self.graph)
        nodes = [n for n in self.graph.node if n.op_type != "Constant"]
        self.consumers = _consumers(nodes, self.consts)
        self.chain = _chain(nodes, self.consts, self.consumers, self.input_name, self.output_name)
        self.input_shape = self.shape
        self.pos = 0
        self.layers: list[dict[str, Any]] = []
        self.weights: dict[str, np.ndarray] = {}
        self.used_names: set[str] = set()
        self.weighted = 0  # conv/linear layers so far, for conv1/fc6-style names
        self.emitted: dict[str, Any] | None = None  # layer emitted by the current node
        self.fusable: dict[str, Any] | None = None  # conv/linear from the previous node

    # -- walking ---------------------------------------------------------------
    def run(self) -> None:
        while self.pos < len(self.chain):
            node = self.take()
            if node.domain not in DEFAULT_DOMAINS or node.op_type not in CONVERTERS:
                raise OnnxImportError(
                    f"{_describe(node)}: op {node.domain + '.' if node.domain else ''}"
                    f"{node.op_type} is not supported; supported ops: "
                    f"{', '.join(sorted(CONVERTERS))}"
                )
            self.emitted = None
            CONVERTERS[node.op_type](self, node)
            emitted = self.emitted
            self.fusable = emitted if emitted and emitted["op"] in ("conv", "linear") else None
        if not self.layers:
            raise OnnxImportError("the graph computes nothing the engine can run (no layers)")

    def take(self) -> onnx.NodeProto:
        self.pos += 1
        return self.chain[self.pos - 1]

    def peek(self) -> onnx.NodeProto | None:
        return self.chain[self.pos] if self.pos < len(self.chain) else None

    def data_index(self, node: onnx.NodeProto) -> int:
        """Position of the (single) computed input of a chain node."""
        return next(i for i, name in enumerate(node.input) if name and name not in self.consts)

    def expect_data_first(self, node: onnx.NodeProto) -> None:
        if self.data_index(node) != 0:
            raise OnnxImportError(
                f"{_describe(node)}: the image data must be input 0, "
                f"got it as input {self.data_index(node)}"
            )

    def need_rank(self, node: onnx.NodeProto, per_image: int) -> None:
        if len(self.shape) != per_image:
            raise OnnxImportError(
                f"{_describe(node)}: needs a {per_image + 1}-D input"
                f"{' (NCHW)' if per_image == 3 else ''}, got {_dims(self.shape)}"
            )

    # -- constants and attributes ---------------------------------------------
    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            raise OnnxImportError(
                f"{_describe(node)}: {what} (input {index}, {name!r}) must be a constant "
                f"(an initializer or a Constant node)"
            )
        return self.consts[name]

    def weight(
        self, node: onnx.NodeProto, index: int, what: str, ndim: int | None = None
    ) -> np.ndarray | None:
        """A float weight as float32, or None when the optional input is absent."""
        value = self.const(node, index, what)
        if value is None:
            return None
        if value.dtype not in FLOAT_DTYPES:
            raise OnnxImportError(
                f"{_describe(node)}: {what} {node.input[index]!r} has dtype {value.dtype}; "
                f"only float32 weights (or float16/float64, converted) are supported"
            )
        if ndim is not None and value.ndim != ndim:
            raise OnnxImportError(
                f"{_describe(node)}: {what} {node.input[index]!r} has shape {value.shape}; "
                f"expected {ndim} dimensions"
            )
        return np.array(value, dtype=np.float32)

    # -- output ------------------------------------------------------------------
    def layer_name(self, node: onnx.NodeProto, op: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", node.name).strip("_")
        if not base:  # caffe style: conv1, pool1, norm1, ..., fc6, drop6, prob
            prefix = NUMBERED_NAMES.get(op)
            base = f"{prefix}{self.weighted}" if prefix else {"softmax": "prob"}.get(op, op)
        name, i = base, 2
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def emit(
        self,
        node: onnx.NodeProto,
        layer: dict[str, Any],
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Append a layer named after `node`; checks it against the spec and moves the
        current shape on."""
        if layer["op"] in ("conv", "linear"):
            self.weighted += 1
        name = self.layer_name(node, layer["op"])
        layer = {"name": name, **layer}
        try:
            self.shape = spec_output_shape(normalise_layer(layer, len(self.layers)), self.shape)
        except SpecError as exc:
            raise OnnxImportError(f"{_describe(node)}: {exc}") from exc
        defaults = OPS[layer["op"]]
        compact = {k: v for k, v in layer.items() if defaults.get(k) is None or v != defaults[k]}
        self.layers.append(compact)
        if weight is not None:
            self.weights[f"{name}.weight"] = weight
        if bias is not None:
            self.weights[f"{name}.bias"] = bias
        self.emitted = compact
        return compact

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
        meta["layers"] = self.layers
        return meta


# -- graph structure ------------------------------------------------------------------


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise OnnxImportError("the model imports no default (ai.onnx) opset")
    version = max(versions)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise OnnxImportError(
            f"opset {version} is not supported; supported: {MIN_OPSET} to {MAX_OPSET} "
            f"(re-export, or convert with onnx.version_converter.convert_version)"
        )
    return version


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is not None and attr.name == "value":
        return _tensor(attr.t)
    if attr is not None and attr.name in ("value_float", "value_floats"):
        return np.array(helper.get_attribute_value(attr), np.float32)
    if attr is not None and attr.name in ("value_int", "value_ints"):
        return np.array(helper.get_attribute_value(attr), np.int64)
    raise OnnxImportError(
        f"{_describe(node)}: only tensor, float and int constants are supported, got "
        f"attributes {[a.name for a in node.attribute]}"
    )


def _tensor(tensor: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # external data not found, unknown element type, ...
        raise OnnxImportError(f"cannot read initializer {tensor.name!r}: {exc}") from exc


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: _tensor(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            consts[node.output[0]] = _constant_value(node)
    return consts


def _graph_input(graph: onnx.GraphProto) -> tuple[str, int | None, tuple[int, ...]]:
    """(name, static batch or None, per-image C,H,W) of the single image input."""
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxImportError(
            f"the graph has {len(inputs)} inputs {[i.name for i in inputs]}; "
            f"exactly one (the NCHW image batch) is supported"
        )
    value = inputs[0]
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != TensorProto.FLOAT:
        kind = TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "non-tensor"
        raise OnnxImportError(f"graph input {value.name!r} is {kind}; only float32 is supported")
    dims = list(tensor.shape.dim)
    if not tensor.HasField("shape") or len(dims) != 4:
        raise OnnxImportError(
            f"graph input {value.name!r} has {len(dims) if tensor.HasField('shape') else 'no'} "
            f"dimensions; a 4-D NCHW image batch is needed"
        )
    chw = []
    for axis, dim in zip("CHW", dims[1:], strict=True):
        if not dim.HasField("dim_value") or dim.dim_value < 1:
            raise OnnxImportError(
                f"graph input {value.name!r} has a symbolic {axis} dimension "
                f"({dim.dim_param or '?'}); export the model with a fixed image size "
                f"(e.g. 1x3x224x224, dynamic only in the batch)"
            )
        chw.append(int(dim.dim_value))
    batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") else None
    return value.name, batch or None, tuple(chw)


def _graph_output(graph: onnx.GraphProto) -> str:
    if len(graph.output) != 1:
        raise OnnxImportError(
            f"the graph has {len(graph.output)} outputs {[o.name for o in graph.output]}; "
            f"exactly one (the class scores) is supported"
        )
    return graph.output[0].name


def _consumers(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes computing from it (constants left out)."""
    users: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in dict.fromkeys(node.input):
            if name and name not in consts:
                users[name].append(i)
    return users


def _source(name: str, producer: dict[str, onnx.NodeProto]) -> str:
    if name in producer:
        return f"{_describe(producer[name])}: its output {name!r}"
    return f"graph input {name!r}"


def _chain(
    nodes: list[onnx.NodeProto],
    consts: dict[str, np.ndarray],
    users: dict[str, list[int]],
    start: str,
    end: str,
) -> list[onnx.NodeProto]:
    """The nodes from input to output, each fed by the previous one; anything else
    (branches, merges, side computations) is rejected."""
    producer = {out: node for node in nodes for out in node.output if out}
    chain: list[int] = []
    current = start
    while current != end or users.get(current):
        readers = [_describe(nodes[i]) for i in users.get(current, [])]
        if current == end or len(readers) > 1:
            readers += ["the graph output"] if current == end else []
            raise OnnxImportError(
                f"{_source(current, producer)} feeds {', '.join(readers)}; "
                f"only a single chain of layers (no branches) is supported"
            )
        if not readers:
            raise OnnxImportError(
                f"{_source(current, producer)} is not used, and the graph output {end!r} is "
                f"not computed from it; only a single chain from input to output is supported"
            )
        index = users[current][0]
        node = nodes[index]
        computed = [n for n in node.input if n and n not in consts]
        if len(computed) != 1:
            raise OnnxImportError(
                f"{_describe(node)}: takes {len(computed)} computed inputs {computed}; "
                f"only one (plus constant weights) is supported in a single chain"
            )
        if index in chain:  # a cycle: not a valid ONNX graph
            raise OnnxImportError(f"{_describe(node)}: the graph has a cycle")
        chain.append(index)
        current = node.output[0]
    for i, node in enumerate(nodes):
        if i not in chain:
            raise OnnxImportError(
                f"{_describe(node)}: not on the chain from input {start!r} to output {end!r}; "
                f"only sequential networks (each node fed by the previous one) are supported"
            )
    return [nodes[i] for i in chain]


# -- attribute helpers --------------------------------------------------------------


def _attrs(node: onnx.NodeProto, allowed: set[str]) -> dict[str, Any]:
    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
    unknown = sorted(set(attrs) - allowed)
    if unknown:
        raise OnnxImportError(
            f"{_describe(node)}: attributes {unknown} are not supported; "
            f"supported: {sorted(allowed)}"
        )
    return attrs


def _reject(node: onnx.NodeProto, attr: str, value: Any, supported: str) -> OnnxImportError:
    return OnnxImportError(f"{_describe(node)}: {attr}={value} is not supported; {supported}")


def _pair_attr(node: onnx.NodeProto, attrs: dict[str, Any], key: str, default: int) -> list[int]:
    value = list(attrs.get(key, [default, default]))
    if len(value) != 2:
        raise _reject(node, key, value, "only 2-D (two values) is supported")
    return [int(v) for v in value]


def _window(node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, Any]:
    """stride and symmetric padding of a 2-D conv/pool; dilations must be 1."""
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise _reject(node, "dilations", list(attrs["dilations"]), "only 1 is supported")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise _reject(
            node, "auto_pad", auto_pad, "only NOTSET (explicit pads) or VALID is supported"
        )
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if auto_pad == "VALID" and any(pads):
        raise _reject(node, "pads", pads, "pads must be absent with auto_pad=VALID")
    if len(pads) != 4:
        raise _reject(node, "pads", pads, "only 2-D pads (four values) are supported")
    if pads[:2] != pads[2:]:
        raise _reject(
            node, "pads", pads, "only symmetric padding (top == bottom, left == right) is supported"
        )
    return {
        "stride": _int_or_pair(_pair_attr(node, attrs, "strides", 1)),
        "padding": _int_or_pair(pads[:2]),
    }


# -- converters -----------------------------------------------------------------------

Converter = Callable[[_Importer, onnx.NodeProto], None]


def _conv(imp: _Importer, node: onnx.NodeProto) -> None:
    attrs = _attrs(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    imp.expect_data_first(node)
    imp.need_rank(node, 3)
    weight = imp.weight(node, 1, "weight", ndim=4)
    assert weight is not None  # input 1 is required by ONNX
    bias = imp.weight(node, 2, "bias", ndim=1)
    out, per_group, kh, kw = weight.shape
    kernel = list(attrs.get("kernel_shape", [kh, kw]))
    if kernel != [kh, kw]:
        raise _reject(node, "kernel_shape", kernel, f"it must match the weight {weight.shape}")
    groups, channels = int(attrs.get("group", 1)), imp.shape[0]
    if groups < 1 or out % groups or per_group * groups != channels:
        raise _reject(
            node, "group", groups,
            f"with {channels} input channels and weight {weight.shape} the channels must "
            f"divide evenly into groups (weight in-channels x group == input channels)",
        )  # fmt: skip
    if bias is not None and bias.shape != (out,):
        raise OnnxImportError(f"{_describe(node)}: bias shape {bias.shape}, expected ({out},)")
    layer = {"op": "conv", "out_channels": out, "kernel": _int_or_pair(kernel),
             **_window(node, attrs), "groups": groups, "bias": bias is not None}  # fmt: skip
    imp.emit(node, layer, weight, bias)


def _pool(imp: _Importer, node: onnx.NodeProto, op: str, extra: str) -> tuple[dict[str, Any], Any]:
    """The pooling layer and the value of its op-specific attribute `extra`."""
    common = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"}
    attrs = _attrs(node, common | {extra})
    imp.expect_data_first(node)
    imp.need_rank(node, 3)
    if "kernel_shape" not in attrs:
        raise OnnxImportError(f"{_describe(node)}: kernel_shape is missing")
    kernel = _pair_attr(node, attrs, "kernel_shape", 0)
    if attrs.get("ceil_mode") and attrs.get("auto_pad") == "VALID":
        # ONNX sizes VALID + ceil_mode differently from explicit pads of 0
        raise _reject(
            node, "auto_pad", "VALID", "with ceil_mode=1 only explicit pads are supported"
        )
    layer = {"op": op, "kernel": _int_or_pair(kernel), **_window(node, attrs),
             "ceil_mode": bool(attrs.get("ceil_mode", 0))}  # fmt: skip
    return layer, attrs.get(extra, 0)


def _maxpool(imp: _Importer, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise OnnxImportError(
            f"{_describe(node)}: the second output {node.output[1]!r} (indices) is not "
            f"supported; only the pooled values are"
        )
    layer, storage_order = _pool(imp, node, "maxpool", "storage_order")
    if storage_order != 0:
        raise _reject(node, "storage_order", storage_order, "only 0 (row major) is supported")
    imp.emit(node, layer)


def _avgpool(imp: _Importer, node: onnx.NodeProto) -> None:
    layer, count_include_pad = _pool(imp, node, "avgpool", "count_include_pad")
    layer["count_include_pad"] = bool(count_include_pad)
    imp.emit(node, layer)


def _global_avgpool(imp: _Importer, node: onnx.NodeProto) -> None:
    _attrs(node, set())
    imp.need_rank(node, 3)
    imp.emit(node, {"op": "adaptive_avgpool", "output_size": 1})


def _lrn(imp: _Importer, node: onnx.NodeProto) -> None:
    attrs = _attrs(node, {"size", "alpha", "beta", "bias"})
    if len(imp.shape) != 3:
        raise OnnxImportError(
            f"{_describe(node)}: LRN on a {len(imp.shape) + 1}-D input ({_dims(imp.shape)}) "
            f"is not supported; only 4-D NCHW"
        )
    if "size" not in attrs:
        raise OnnxImportError(f"{_describe(node)}: size is missing")
    layer = {
        "op": "lrn",
        "size": int(attrs["size"]),
        "alpha": _clean_float(attrs.get("alpha", 1e-4)),
        "beta": _clean_float(attrs.get("beta", 0.75)),
        "k": _clean_float(attrs.get("bias", 1.0)),
    }
    imp.emit(node, layer)


def _relu(imp: _Importer, node: onnx.NodeProto) -> None:
    _attrs(node, set())
    source = node.input[0]
    alone = len(imp.consumers[source]) == 1 and source != imp.output_name
    if imp.fusable is not None and not imp.fusable.get("relu") and alone:
        imp.fusable["relu"] = True
    else:
        imp.emit(node, {"op": "relu"})


def _flatten(imp: _Importer, node: onnx.NodeProto) -> None:
    axis = int(_attrs(node, {"axis"}).get("axis", 1))
    rank = len(imp.shape) + 1
    if (axis + rank if axis < 0 else axis) != 1:
        raise _reject(node, "axis", axis, "only 1 (keep the batch, flatten the rest) is supported")
    imp.emit(node, {"op": "flatten"})


def _reshape(imp: _Importer, node: onnx.NodeProto) -> None:
    allowzero = int(_attrs(node, {"allowzero"}).get("allowzero", 0))
    imp.expect_data_first(node)
    target = imp.const(node, 1, "shape")
    assert target is not None
    target = [int(v) for v in target.reshape(-1)]
    features = math.prod(imp.shape)
    supported = (
        f"only a flattening reshape to [N, {features}] is supported "
        f"([0, -1], [-1, {features}] or [batch, -1])"
    )
    if len(target) != 2 or (allowzero and 0 in target):
        raise _reject(node, "shape", target, supported)
    first, second = target
    if second not in (-1, features) or (first == -1 and second != features):
        raise _reject(node, "shape", target, supported)
    if first < -1 or (first > 0 and imp.batch is not None and first != imp.batch):
        raise _reject(node, "shape", target, f"{supported}; the batch is {imp.batch}")
    imp.emit(node, {"op": "flatten"})


def _linear(imp: _Importer, node: onnx.NodeProto, weight: np.ndarray, bias: Any) -> None:
    """Emit a fully connected layer; `weight` is out x in."""
    imp.need_rank(node, 1)
    out, features = weight.shape
    if features != imp.shape[0]:
        raise OnnxImportError(
            f"{_describe(node)}: weight {weight.shape} (out x in) does not take "
            f"{imp.shape[0]} input features"
        )
    layer = {"op": "linear", "out_features": out, "bias": bias is not None}
    imp.emit(node, layer, np.ascontiguousarray(weight), bias)


def _bias(node: onnx.NodeProto, value: np.ndarray | None, out: int) -> np.ndarray | None:
    """A bias broadcast over the batch: shape (out,), (1, out) or a single value."""
    if value is None:
        return None
    if value.size == 1:
        return np.full(out, value.reshape(-1)[0], np.float32)
    if value.shape in ((out,), (1, out)):
        return np.ascontiguousarray(value.reshape(out), np.float32)
    raise OnnxImportError(
        f"{_describe(node)}: bias shape {value.shape} is not supported; expected ({out},) "
        f"or (1, {out})"
    )


def _gemm(imp: _Importer, node: onnx.NodeProto) -> None:
    attrs = _attrs(node, {"alpha", "beta", "transA", "transB"})
    imp.expect_data_first(node)
    for key, want in (("alpha", 1.0), ("beta", 1.0), ("transA", 0)):
        if key == "beta" and len(node.input) < 3:
            continue
        if attrs.get(key, want) != want:
            raise _reject(node, key, attrs[key], f"only {key}={want} is supported")
    weight = imp.weight(node, 1, "weight", ndim=2)
    assert weight is not None
    if not attrs.get("transB", 0):
        weight = weight.T
    bias = _bias(node, imp.weight(node, 2, "bias"), weight.shape[0])
    _linear(imp, node, weight, bias)


def _matmul(imp: _Importer, node: onnx.NodeProto) -> None:
    _attrs(node, set())
    if len(imp.shape) == 3:
        _adaptive_from_matmuls(imp, node)
        return
    imp.expect_data_first(node)
    weight = imp.weight(node, 1, "weight", ndim=2)
    assert weight is not None
    add = imp.peek()
    bias = None
    if add is not None and add.op_type == "Add" and add.domain in DEFAULT_DOMAINS:
        imp.take()
        _attrs(add, set())
        index = 1 - imp.data_index(add)
        bias = _bias(add, imp.weight(add, index, "bias"), weight.shape[1])
    _linear(imp, node, weight.T, bias)


def _adaptive_from_matmuls(imp: _Importer, node: onnx.NodeProto) -> None:
    """x @ A_w^T then A_h @ (.) with averaging matrices: the adaptive average pool
    `onnx_export` writes when the input does not divide into the output."""
    _, h, w = imp.shape
    supported = (
        "MatMul on a 4-D tensor is only supported as the adaptive average pool written by "
        "onnx_export (x @ A_w^T, then A_h @ that)"
    )
    cols = imp.const(node, 1, "column averaging matrix")
    rows_node = imp.peek()
    if (
        imp.data_index(node) != 0
        or cols is None
        or cols.ndim != 2
        or cols.shape[0] != w
        or not np.allclose(cols, adaptive_matrix(w, cols.shape[1]).T, rtol=1e-6, atol=1e-7)
        or rows_node is None
        or rows_node.op_type != "MatMul"
        or imp.data_index(rows_node) != 1
    ):
        raise OnnxImportError(f"{_describe(node)}: {supported}")
    imp.take()
    rows = imp.const(rows_node, 0, "row averaging matrix")
    if (
        rows is None
        or rows.ndim != 2
        or rows.shape[1] != h
        or not np.allclose(rows, adaptive_matrix(h, rows.shape[0]), rtol=1e-6, atol=1e-7)
    ):
        raise OnnxImportError(f"{_describe(rows_node)}: {supported}")
    imp.emit(node, {"op": "adaptive_avgpool", "output_size": [rows.shape[0], cols.shape[1]]})


def _add(imp: _Importer, node: onnx.NodeProto) -> None:
    raise OnnxImportError(
        f"{_describe(node)}: Add is only supported as the bias right after a MatMul"
    )


def _slice(imp: _Importer, node: onnx.NodeProto) -> None:
    """Accept only a slice that keeps everything the engine computes, like the trim
    `onnx_export` puts after a ceil-mode pool."""
    _attrs(node, set())
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
        raise OnnxImportError(
            f"{_describe(node)}: starts={starts} ends={ends} axes={axes} steps={steps} is not "
            f"supported; only a slice that keeps the whole {_dims(imp.shape)} tensor is"
        )


def _dropout(imp: _Importer, node: onnx.NodeProto) -> None:
    attrs = _attrs(node, {"ratio", "seed"})
    ratio = attrs.get("ratio", 0.5)
    value = imp.const(node, 1, "ratio")
    if value is not None:
        ratio = float(value.reshape(-1)[0])
    training = imp.const(node, 2, "training_mode")
    if training is not None and bool(training.reshape(-1)[0]):
        raise _reject(
            node, "training_mode", True, "only inference (training_mode false) is supported"
        )
    imp.emit(node, {"op": "dropout", "ratio": _clean_float(ratio)})


def _softmax(imp: _Importer, node: onnx.NodeProto) -> None:
    axis = int(_attrs(node, {"axis"}).get("axis", 1 if imp.opset < 13 else -1))
    if len(imp.shape) != 1:
        raise OnnxImportError(
            f"{_describe(node)}: softmax over a {_dims(imp.shape)} tensor is not supported; "
            f"only over the classes of a 2-D N x classes tensor"
        )
    if axis not in (1, -1):
        raise _reject(node, "axis", axis, "only 1 or -1 (the classes) is supported")
    imp.emit(node, {"op": "softmax"})


def _identity(imp: _Importer, node: onnx.NodeProto) -> None:
    _attrs(node, set())


CONVERTERS: dict[str, Converter] = {
    "Conv": _conv,
    "Relu": _relu,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": _global_avgpool,
    "LRN": _lrn,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    "Slice": _slice,
    "Dropout": _dropout,
    "Softmax": _softmax,
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

    The result passes `normalise_layers` and `expected_params`; anything the engine
    cannot compute exactly raises `OnnxImportError` instead of importing differently.
    """
    model, source = _load(path_or_model)
    imp = _Importer(model)
    imp.run()
    meta = imp.meta(source, name, labels)
    want = expected_params(normalise_layers(meta["layers"]), imp.input_shape)
    got = {key: value.shape for key, value in imp.weights.items()}
    if got != want:  # a converter bug, never the user's model
        raise OnnxImportError(f"internal error: weights {got} do not match the layers {want}")
    return meta, imp.weights
