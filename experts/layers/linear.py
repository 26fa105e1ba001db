"""linear: a fully connected layer, weights stored out x in, with a fused ReLU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.adaptive_avgpool import from_onnx_matmuls
from experts.layers.base import Build, Layer, Shape, SpecError, Weights, positive, register
from kernels import ops
from kernels import reference as ref


def _emit(imp: Any, node: Any, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """`weight` out x in."""
    imp.need_rank(node, 1)
    out, features = weight.shape
    if features != imp.shape[0]:
        raise imp.error(
            node, f"weight {weight.shape} (out x in) does not take {imp.shape[0]} input features"
        )
    keys = {"out_features": out, "bias": bias is not None}
    imp.emit(node, Linear, keys, np.ascontiguousarray(weight), bias)


def _bias(imp: Any, node: Any, value: np.ndarray | None, out: int) -> np.ndarray | None:
    """A bias broadcast over the batch: shape (out,), (1, out) or a single value."""
    if value is None:
        return None
    if value.size == 1:
        return np.full(out, value.reshape(-1)[0], np.float32)
    if value.shape in ((out,), (1, out)):
        return np.ascontiguousarray(value.reshape(out), np.float32)
    raise imp.error(
        node, f"bias shape {value.shape} is not supported; expected ({out},) or (1, {out})"
    )


def _from_gemm(imp: Any, node: Any) -> None:
    attrs = imp.attrs(node, {"alpha", "beta", "transA", "transB"})
    imp.expect_data_first(node)
    for key, want in (("alpha", 1.0), ("beta", 1.0), ("transA", 0)):
        if key == "beta" and len(node.input) < 3:
            continue
        if attrs.get(key, want) != want:
            raise imp.reject(node, key, attrs[key], f"only {key}={want} is supported")
    weight = imp.weight(node, 1, "weight", ndim=2, required=True)
    if not attrs.get("transB", 0):
        weight = weight.T
    _emit(imp, node, weight, _bias(imp, node, imp.weight(node, 2, "bias"), weight.shape[0]))


def _from_matmul(imp: Any, node: Any) -> None:
    """x @ W (+ b in a following Add); on a 4-D tensor, the averaging pair that ONNX
    export writes for an adaptive average pool."""
    imp.attrs(node, set())
    if len(imp.shape) == 3:
        from_onnx_matmuls(imp, node)
        return
    imp.expect_data_first(node)
    weight = imp.weight(node, 1, "weight", ndim=2, required=True)
    add = imp.peek()
    bias = None
    if add is not None and add.op_type == "Add" and imp.is_default_domain(add):
        imp.take()
        imp.attrs(add, set())
        index = 1 - imp.data_index(add)
        bias = _bias(imp, add, imp.weight(add, index, "bias"), weight.shape[1])
    _emit(imp, node, weight.T, bias)


@register
@dataclass(frozen=True)
class Linear(Layer):
    out_features: int
    relu: bool = False
    bias: bool = True

    op: ClassVar[str] = "linear"
    weighted: ClassVar[bool] = True
    fuses_relu: ClassVar[bool] = True
    dual_module: ClassVar[bool] = True
    onnx_name: ClassVar[str] = "fc"
    onnx_import: ClassVar = {"Gemm": _from_gemm, "MatMul": _from_matmul}

    def check(self, where: str) -> None:
        positive(self, where, "out_features")

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise SpecError(f"{self.name}: linear needs a flat input, got {shape}; add a flatten")
        return (self.out_features,)

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        shapes = {f"{self.name}.weight": (self.out_features, in_shape[0])}
        if self.bias:
            shapes[f"{self.name}.bias"] = (self.out_features,)
        return shapes

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        return ops.Linear(
            build.device,
            self.tensor(weights, "weight"),
            self.tensor(weights, "bias"),
            self.relu,
            build.precision,
            build.input_range,
            build.segments,
            store=build.store,
            key=build.key,
            weight_scale=self.tensor(weights, "weight_scale"),
            params=build.params,
        )

    def dual_launcher(self, build: Build, big: Any, little: Any) -> ops.Launcher:
        return ops.DualLinear(
            big, little.project, little.shift, little.weight, little.bias, little.threshold
        )

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.linear(
            x, self.tensor(weights, "weight"), self.tensor(weights, "bias"), self.relu
        )

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.Linear(in_shape[0], self.out_features, bias=self.bias)

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        y = graph.node("Gemm", [x, *graph.params(self)], self.name, transB=1)
        return graph.relu_if(self, y)
