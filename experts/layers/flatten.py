"""flatten: C x H x W -> C*H*W features per image, in PyTorch's order (before fc6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Shape, Weights, register
from kernels import ops


def _from_flatten(imp: Any, node: Any) -> None:
    axis = int(imp.attrs(node, {"axis"}).get("axis", 1))
    rank = len(imp.shape) + 1
    if (axis + rank if axis < 0 else axis) != 1:
        raise imp.reject(
            node, "axis", axis, "only 1 (keep the batch, flatten the rest) is supported"
        )
    imp.emit(node, Flatten, {})


def _from_reshape(imp: Any, node: Any) -> None:
    allowzero = int(imp.attrs(node, {"allowzero"}).get("allowzero", 0))
    imp.expect_data_first(node)
    target = [int(v) for v in imp.const(node, 1, "shape").reshape(-1)]
    features = math.prod(imp.shape)
    supported = (
        f"only a flattening reshape to [N, {features}] is supported "
        f"([0, -1], [-1, {features}] or [batch, -1])"
    )
    if len(target) != 2 or (allowzero and 0 in target):
        raise imp.reject(node, "shape", target, supported)
    first, second = target
    if second not in (-1, features) or (first == -1 and second != features):
        raise imp.reject(node, "shape", target, supported)
    if first < -1 or (first > 0 and imp.batch is not None and first != imp.batch):
        raise imp.reject(node, "shape", target, f"{supported}; the batch is {imp.batch}")
    imp.emit(node, Flatten, {})


@register
@dataclass(frozen=True)
class Flatten(Layer):
    op: ClassVar[str] = "flatten"
    onnx_name: ClassVar[str] = "flatten"
    onnx_numbered: ClassVar[bool] = False
    onnx_import: ClassVar = {"Flatten": _from_flatten, "Reshape": _from_reshape}

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher | None:
        if len(in_shape) == 1:
            return None  # already flat
        return ops.Flatten(build.device, in_shape)

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.Flatten()

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        return graph.node("Flatten", [x], self.name, axis=1)
