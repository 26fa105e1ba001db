"""relu: max(x, 0) on its own (after a conv or linear layer it folds into their `relu`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Shape, Weights, register
from kernels import ops
from kernels import reference as ref


def _from_onnx(imp: Any, node: Any) -> None:
    imp.attrs(node, set())
    if not imp.fuse_relu(node):
        imp.emit(node, Relu, {})


@register
@dataclass(frozen=True)
class Relu(Layer):
    op: ClassVar[str] = "relu"
    onnx_name: ClassVar[str] = "relu"
    onnx_import: ClassVar = {"Relu": _from_onnx}

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        return ops.Relu(build.device, math.prod(in_shape))

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.relu(x)

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.ReLU()

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        return graph.node("Relu", [x], self.name)
