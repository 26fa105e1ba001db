"""maxpool and avgpool: pooling windows over each plane, ceil mode as Caffe and torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Pair, Shape, SpecError, Weights, positive, register
from kernels import ops
from kernels import reference as ref
from kernels.geometry import pool_out


def onnx_ceil_pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Pooled length by ONNX's shape-inference formula, which keeps a ceil-mode window
    that starts in the right padding (torch, onnxruntime and the engine drop it)."""
    return -(-(size + 2 * pad - kernel) // stride) + 1


def _keys(imp: Any, node: Any, extra: str) -> tuple[dict[str, Any], Any]:
    """The pooling keys of an ONNX pooling node, and its op-specific attribute `extra`."""
    common = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"}
    attrs = imp.attrs(node, common | {extra})
    imp.expect_data_first(node)
    imp.need_rank(node, 3)
    if "kernel_shape" not in attrs:
        raise imp.error(node, "kernel_shape is missing")
    kernel = imp.pair_attr(node, attrs, "kernel_shape", 0)
    if attrs.get("ceil_mode") and attrs.get("auto_pad") == "VALID":
        # ONNX sizes VALID + ceil_mode differently from explicit pads of 0
        raise imp.reject(
            node, "auto_pad", "VALID", "with ceil_mode=1 only explicit pads are supported"
        )
    keys = {
        "kernel": kernel,
        **imp.window(node, attrs),
        "ceil_mode": bool(attrs.get("ceil_mode", 0)),
    }
    return keys, attrs.get(extra, 0)


def _maxpool_from_onnx(imp: Any, node: Any) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise imp.error(
            node,
            f"the second output {node.output[1]!r} (indices) is not "
            "supported; only the pooled values are",
        )
    keys, storage_order = _keys(imp, node, "storage_order")
    if storage_order != 0:
        raise imp.reject(node, "storage_order", storage_order, "only 0 (row major) is supported")
    imp.emit(node, MaxPool, keys)


def _avgpool_from_onnx(imp: Any, node: Any) -> None:
    keys, count_include_pad = _keys(imp, node, "count_include_pad")
    imp.emit(node, AvgPool, {**keys, "count_include_pad": bool(count_include_pad)})


@dataclass(frozen=True)
class _Pool(Layer):
    kernel: Pair
    stride: Pair | None = None  # default: the kernel size
    padding: Pair = (0, 0)
    ceil_mode: bool = False

    onnx_name: ClassVar[str] = "pool"

    def __post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel)

    def check(self, where: str) -> None:
        positive(self, where, "kernel", "stride")
        if min(self.padding) < 0:
            raise SpecError(f"{where}: padding must be >= 0, got {self.padding}")
        if any(p * 2 > k for p, k in zip(self.padding, self.kernel, strict=True)):
            raise SpecError(f"{where}: padding must be at most half the kernel size")

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = self.chw(shape)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh = pool_out(h, kh, sh, ph, self.ceil_mode)
        ow = pool_out(w, kw, sw, pw, self.ceil_mode)
        if oh < 1 or ow < 1:
            raise SpecError(f"{self.name}: pooling window larger than input {h}x{w}")
        return (c, oh, ow)

    def _onnx_attrs(self) -> dict[str, Any]:
        ph, pw = self.padding
        return {
            "kernel_shape": list(self.kernel),
            "strides": list(self.stride),
            "pads": [ph, pw, ph, pw],
            "ceil_mode": int(self.ceil_mode),
        }

    def _trim_ceil_overhang(self, graph: Any, y: str, shape: Shape) -> str:
        """Slice a ceil-mode pool to the engine's size: exact whether the runtime drops
        the window starting in the padding or not, and shape inference agrees."""
        if not self.ceil_mode:
            return y
        axes = list(zip(shape[1:], self.kernel, self.stride, self.padding, strict=True))
        want = [pool_out(n, k, s, p, True) for n, k, s, p in axes]
        if want == [onnx_ceil_pool_out(n, k, s, p) for n, k, s, p in axes]:
            return y
        ints = [
            graph.const(f"{self.name}.trim_{key}", np.array(v, np.int64))
            for key, v in (("starts", [0, 0]), ("ends", want), ("axes", [2, 3]))
        ]
        return graph.node("Slice", [y, *ints], f"{self.name}/trim")


@register
@dataclass(frozen=True)
class MaxPool(_Pool):
    op: ClassVar[str] = "maxpool"
    onnx_import: ClassVar = {"MaxPool": _maxpool_from_onnx}

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        return ops.Pool2d(
            build.device, in_shape, "max", self.kernel, self.stride, self.padding, self.ceil_mode
        )

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.maxpool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode)

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.MaxPool2d(self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        y = graph.node("MaxPool", [x], self.name, **self._onnx_attrs())
        return self._trim_ceil_overhang(graph, y, shape)


@register
@dataclass(frozen=True)
class AvgPool(_Pool):
    count_include_pad: bool = True

    op: ClassVar[str] = "avgpool"
    onnx_import: ClassVar = {"AveragePool": _avgpool_from_onnx}

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        return ops.Pool2d(
            build.device,
            in_shape,
            "avg",
            self.kernel,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
        )

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.avgpool2d(
            x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.AvgPool2d(
            self.kernel,
            self.stride,
            self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
        )

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        attrs = self._onnx_attrs() | {"count_include_pad": int(self.count_include_pad)}
        y = graph.node("AveragePool", [x], self.name, **attrs)
        return self._trim_ceil_overhang(graph, y, shape)
