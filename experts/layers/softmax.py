"""softmax: class probabilities over the features of each image (CaffeNet's prob)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Shape, SpecError, Weights, register
from kernels import ops
from kernels import reference as ref


def _from_onnx(imp: Any, node: Any) -> None:
    axis = int(imp.attrs(node, {"axis"}).get("axis", 1 if imp.opset < 13 else -1))
    if len(imp.shape) != 1:
        raise imp.error(
            node,
            f"softmax over a {imp.dims()} tensor is not supported; only "
            "over the classes of a 2-D N x classes tensor",
        )
    if axis not in (1, -1):
        raise imp.reject(node, "axis", axis, "only 1 or -1 (the classes) is supported")
    imp.emit(node, Softmax, {})


@register
@dataclass(frozen=True)
class Softmax(Layer):
    op: ClassVar[str] = "softmax"
    onnx_name: ClassVar[str] = "prob"
    onnx_numbered: ClassVar[bool] = False
    onnx_import: ClassVar = {"Softmax": _from_onnx}

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        if len(in_shape) != 1:
            raise SpecError(f"{self.name}: softmax needs a flat input, got {in_shape}")
        return ops.Softmax(build.device, in_shape[0])

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.softmax(x)

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.Softmax(dim=1)

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        # the engine normalises over the last axis; on N x features that is axis 1
        return graph.node("Softmax", [x], self.name, axis=1 if len(shape) == 1 else -1)
