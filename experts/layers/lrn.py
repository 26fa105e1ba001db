"""lrn: local response normalisation across channels (AlexNet's and CaffeNet's norm1)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Shape, SpecError, Weights, readable_float, register
from kernels import ops
from kernels import reference as ref


def _from_onnx(imp: Any, node: Any) -> None:
    attrs = imp.attrs(node, {"size", "alpha", "beta", "bias"})
    if len(imp.shape) != 3:
        raise imp.error(
            node,
            f"LRN on a {len(imp.shape) + 1}-D input ({imp.dims()}) is not supported; only 4-D NCHW",
        )
    if "size" not in attrs:
        raise imp.error(node, "size is missing")
    keys = {
        "size": int(attrs["size"]),
        "alpha": readable_float(attrs.get("alpha", 1e-4)),
        "beta": readable_float(attrs.get("beta", 0.75)),
        "k": readable_float(attrs.get("bias", 1.0)),
    }
    imp.emit(node, Lrn, keys)


@cache
def _torch_lrn() -> type:
    """ChannelLRN, made on first use (torch is the optional `train` extra)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ChannelLRN(nn.Module):
        """b_c = a_c / (k + alpha/size * sum of a_c'^2 over c' in
        [c - (size-1)//2, c + size//2])^beta, exactly as the numpy twin.

        The window sum is a 1x1 convolution with a fixed 0/1 band matrix: faster
        training steps on a CPU than torch.nn.LocalResponseNorm (an avg_pool3d), and
        for an even size it follows the engine, whose window torch's puts one channel
        lower."""

        def __init__(self, channels: int, size: int, alpha: float, beta: float, k: float):
            super().__init__()
            self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
            offset = torch.arange(channels)[None, :] - torch.arange(channels)[:, None]
            band = (offset >= -((size - 1) // 2)) & (offset <= size // 2)
            self.register_buffer("band", band.to(torch.float32)[:, :, None, None], persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            total = F.conv2d(x * x, self.band)
            return x / (self.k + self.alpha / self.size * total).pow(self.beta)

    return ChannelLRN


@register
@dataclass(frozen=True)
class Lrn(Layer):
    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    op: ClassVar[str] = "lrn"
    onnx_name: ClassVar[str] = "norm"
    onnx_import: ClassVar = {"LRN": _from_onnx}

    def check(self, where: str) -> None:
        if self.size < 1 or self.k <= 0 or self.beta < 0:
            raise SpecError(f"{where}: lrn needs size >= 1, k > 0 and beta >= 0")

    def output_shape(self, shape: Shape) -> Shape:
        self.chw(shape)
        return shape

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        return ops.LRN(build.device, in_shape, self.size, self.alpha, self.beta, self.k)

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.lrn(x, self.size, self.alpha, self.beta, self.k)

    def torch_module(self, in_shape: Shape) -> Any:
        return _torch_lrn()(in_shape[0], self.size, self.alpha, self.beta, self.k)

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        return graph.node(
            "LRN", [x], self.name, size=self.size, alpha=self.alpha, beta=self.beta, bias=self.k
        )
