"""Layout change, ReLU, softmax and the mixture merge (kernels/cl/elementwise.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.runtime import Device

I32 = np.int32


class SwapOuter:
    """[A][B][inner] -> [B][A][inner]; with A=N, B=C it turns NCHW into CNHW."""

    def __init__(self, device: Device, inner: int) -> None:
        self.device, self.inner = device, inner
        self.kernel = device.kernel("elementwise.cl", "swap_outer")

    def __call__(self, a: int, b: int, x: Any, y: Any) -> None:
        self.device.launch(self.kernel, (b, a), None, x, y, I32(a), I32(b), I32(self.inner))


class Relu:
    def __init__(self, device: Device, features: int) -> None:
        self.device, self.features = device, features
        self.kernel = device.kernel("elementwise.cl", "relu")

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        total = n * self.features
        self.device.launch(self.kernel, (total,), None, x, y, I32(total))


class Softmax:
    """Softmax over the features of each image ([N][F])."""

    def __init__(self, device: Device, features: int) -> None:
        self.device, self.features = device, features
        self.kernel = device.kernel("elementwise.cl", "softmax")

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        self.device.launch(self.kernel, (n,), None, x, y, I32(self.features))


class Merge:
    """Gate-weighted sum of expert output rows: the combine step of the mixture."""

    def __init__(self, device: Device, features: int) -> None:
        self.device, self.features = device, features
        self.kernel = device.kernel("elementwise.cl", "merge")

    def __call__(self, n: int, topk: int, outputs: Any, idx: Any, gates: Any, y: Any) -> None:
        self.device.launch(
            self.kernel, (self.features, n), None, outputs, idx, gates, y,
            I32(self.features), I32(topk),
        )  # fmt: skip
