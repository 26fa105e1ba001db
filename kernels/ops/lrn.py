"""Local response normalisation across channels (kernels/cl/lrn.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.ops.launcher import Launcher
from kernels.runtime import Device

I32, I64, F32 = np.int32, np.int64, np.float32


class LRN(Launcher):
    """AlexNet's cross-channel LRN on [C][N][H][W] activations."""

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        size: int,
        alpha: float,
        beta: float,
        k: float,
    ) -> None:
        self.device = device
        self.c, self.h, self.w = in_shape
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.kernel = device.kernel("lrn.cl", "lrn", {"BETA_075": beta == 0.75})

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.c, self.h, self.w)

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        inner = n * self.h * self.w  # one channel's plane across the batch (CNHW)
        items = -(-inner // 8)  # the kernel skips the items past `inner`
        local = self.device.work_group(-(-self.h * self.w // 8), 1)
        if local is not None:
            items = -(-items // local[0]) * local[0]
        self.device.launch(
            self.kernel,
            (items, 1),
            local,
            x,
            y,
            I32(self.c),
            I32(inner),
            I64(inner),
            I32(self.size),
            F32(self.alpha / self.size),
            F32(self.beta),
            F32(self.k),
        )
