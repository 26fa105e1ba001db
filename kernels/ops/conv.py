"""2-D convolution as im2col + register-blocked GEMM (kernels/cl/gemm.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.geometry import conv_out
from kernels.runtime import Device

I32 = np.int32


def pack_rows(a: np.ndarray, block: int = 8) -> np.ndarray:
    """[M][K] -> [ceil(M/block)][K][block], zero rows appended: the GEMM's A panels."""
    m, k = a.shape
    mp = -(-m // block) * block
    padded = np.zeros((mp, k), np.float32)
    padded[:m] = a
    return np.ascontiguousarray(padded.reshape(mp // block, block, k).transpose(0, 2, 1))


class Conv2d:
    """Convolution on [C][N][H][W] activations, bias and ReLU fused in the GEMM."""

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        groups: int = 1,
        relu: bool = False,
    ) -> None:
        self.device = device
        self.c, self.h, self.w = in_shape
        self.m, self.cg, self.kh, self.kw = weight.shape
        self.sh, self.sw = stride
        self.ph, self.pw = padding
        self.groups = groups
        self.oh = conv_out(self.h, self.kh, self.sh, self.ph)
        self.ow = conv_out(self.w, self.kw, self.sw, self.pw)
        self.k = self.cg * self.kh * self.kw
        self.mg = self.m // groups
        self.nv = 3  # 8 x 48 blocks: the fastest shape measured on PoCL's CPU device
        self.nb = 16 * self.nv
        bias = np.zeros(self.m, np.float32) if bias is None else bias.astype(np.float32)
        wg = weight.reshape(groups, self.mg, self.k).astype(np.float32)
        self.a = [device.upload(pack_rows(wg[g])) for g in range(groups)]
        self.bias = [device.upload(bias[g * self.mg : (g + 1) * self.mg]) for g in range(groups)]
        self.weight_bytes = sum(a.size for a in self.a) + 4 * self.m
        self.gemm = device.kernel("gemm.cl", "gemm_packed", {"NV": self.nv, "RELU": relu})
        self.im2col = device.kernel("im2col.cl", "im2col_packed", {"NB": self.nb})

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.m, self.oh, self.ow)

    def panels(self, n: int) -> int:
        return -(-n * self.oh * self.ow // self.nb)

    def scratch_bytes(self, n: int) -> int:
        return self.panels(n) * self.k * self.nb * 4

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        panels, cols = self.panels(n), n * self.oh * self.ow
        for g in range(self.groups):
            self.device.launch(
                self.im2col, (self.k, panels), (1, 1), x, scratch,
                I32(n), I32(self.h), I32(self.w), I32(g * self.cg),
                I32(self.kh), I32(self.kw), I32(self.sh), I32(self.sw),
                I32(self.ph), I32(self.pw), I32(self.oh), I32(self.ow), I32(self.k),
            )  # fmt: skip
            self.device.launch(
                self.gemm, (-(-self.mg // 8), panels), (1, 1),
                I32(self.mg), I32(cols), I32(self.k), self.a[g], scratch, self.bias[g],
                y, I32(cols), I32(g * self.mg),
            )  # fmt: skip
