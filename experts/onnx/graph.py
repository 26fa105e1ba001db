"""The structure of an ONNX graph the importer accepts: one float image input, one
output, constants, and a single chain of nodes from the one to the other."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from experts.onnx.errors import OnnxImportError

MIN_OPSET, MAX_OPSET = 11, 21
DEFAULT_DOMAINS = ("", "ai.onnx")


def describe(node: onnx.NodeProto) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    return f"unnamed {node.op_type} node (output {node.output[0]!r})"


def default_opset(model: onnx.ModelProto) -> int:
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
        f"{describe(node)}: only tensor, float and int constants are supported, got "
        f"attributes {[a.name for a in node.attribute]}"
    )


def _tensor(tensor: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # external data not found, unknown element type, ...
        raise OnnxImportError(f"cannot read initializer {tensor.name!r}: {exc}") from exc


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: _tensor(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            consts[node.output[0]] = _constant_value(node)
    return consts


def graph_input(graph: onnx.GraphProto) -> tuple[str, int | None, tuple[int, ...]]:
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


def graph_output(graph: onnx.GraphProto) -> str:
    if len(graph.output) != 1:
        raise OnnxImportError(
            f"the graph has {len(graph.output)} outputs {[o.name for o in graph.output]}; "
            f"exactly one (the class scores) is supported"
        )
    return graph.output[0].name


def consumers(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes computing from it (constants left out)."""
    users: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in dict.fromkeys(node.input):
            if name and name not in consts:
                users[name].append(i)
    return users


def _source(name: str, producer: dict[str, onnx.NodeProto]) -> str:
    if name in producer:
        return f"{describe(producer[name])}: its output {name!r}"
    return f"graph input {name!r}"


def chain(
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
        readers = [describe(nodes[i]) for i in users.get(current, [])]
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
                f"{describe(node)}: takes {len(computed)} computed inputs {computed}; "
                f"only one (plus constant weights) is supported in a single chain"
            )
        if index in chain:  # a cycle: not a valid ONNX graph
            raise OnnxImportError(f"{describe(node)}: the graph has a cycle")
        chain.append(index)
        current = node.output[0]
    for i, node in enumerate(nodes):
        if i not in chain:
            raise OnnxImportError(
                f"{describe(node)}: not on the chain from input {start!r} to output {end!r}; "
                f"only sequential networks (each node fed by the previous one) are supported"
            )
    return [nodes[i] for i in chain]
