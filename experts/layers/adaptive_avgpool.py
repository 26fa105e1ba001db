"""adaptive_avgpool: average pooling to a fixed output size (AlexNet's avgpool to 6 x 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Pair, Shape, Weights, positive, register
from kernels import ops
from kernels import reference as ref


def adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out x size) averaging matrix of a 1-D adaptive average pool: row i averages
    [floor(i*size/out), ceil((i+1)*size/out)), as torch does."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _from_global(imp: Any, node: Any) -> None:
    imp.attrs(node, set())
    imp.need_rank(node, 3)
    imp.emit(node, AdaptiveAvgPool, {"output_size": 1})


def from_onnx_matmuls(imp: Any, node: Any) -> None:
    """x @ A_w^T then A_h @ (.) with averaging matrices: what `to_onnx` writes when the
    input does not divide into the output (linear's MatMul converter hands it over)."""
    _, h, w = imp.shape
    supported = (
        "MatMul on a 4-D tensor is only supported as the adaptive average pool written by "
        "onnx export (x @ A_w^T, then A_h @ that)"
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
        raise imp.error(node, supported)
    imp.take()
    rows = imp.const(rows_node, 0, "row averaging matrix")
    if (
        rows is None
        or rows.ndim != 2
        or rows.shape[1] != h
        or not np.allclose(rows, adaptive_matrix(h, rows.shape[0]), rtol=1e-6, atol=1e-7)
    ):
        raise imp.error(rows_node, supported)
    imp.emit(node, AdaptiveAvgPool, {"output_size": [rows.shape[0], cols.shape[1]]})


@register
@dataclass(frozen=True)
class AdaptiveAvgPool(Layer):
    output_size: Pair

    op: ClassVar[str] = "adaptive_avgpool"
    onnx_name: ClassVar[str] = "pool"
    onnx_import: ClassVar = {"GlobalAveragePool": _from_global}

    def check(self, where: str) -> None:
        positive(self, where, "output_size")

    def output_shape(self, shape: Shape) -> Shape:
        c, _, _ = self.chw(shape)
        return (c, *self.output_size)

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher | None:
        if self.output_shape(in_shape) == in_shape:
            return None  # already that size (alexnet at 224 x 224): an average of one
        return ops.AdaptiveAvgPool2d(build.device, in_shape, self.output_size)

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.adaptive_avgpool2d(x, self.output_size)

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.AdaptiveAvgPool2d(self.output_size)

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        (_, h, w), (oh, ow) = shape, self.output_size
        if (oh, ow) == (1, 1):
            return graph.node("GlobalAveragePool", [x], self.name)
        if h % oh == 0 and w % ow == 0:
            k = [h // oh, w // ow]
            return graph.node("AveragePool", [x], self.name, kernel_shape=k, strides=k)
        # out = A_h @ x @ A_w^T, MatMul broadcasting over N and C
        cols = graph.const(f"{self.name}.avg_cols", adaptive_matrix(w, ow).T)
        rows = graph.const(f"{self.name}.avg_rows", adaptive_matrix(h, oh))
        y = graph.node("MatMul", [x, cols], self.name)
        return graph.node("MatMul", [rows, y], f"{self.name}/rows")
