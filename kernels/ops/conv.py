"""2-D convolution as a GEMM over im2col columns (kernels/cl/gemm.cl, im2col.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl

from kernels.geometry import conv_out
from kernels.runtime import Device

I32 = np.int32
MIN_ITEMS = 16  # work-items per launch that keep 2+ cores busy and balanced


def pack_rows(a: np.ndarray, block: int = 8) -> np.ndarray:
    """[M][K] -> [ceil(M/block)][K][block], zero rows appended: the GEMM's A panels."""
    m, k = a.shape
    mp = -(-m // block) * block
    padded = np.zeros((mp, k), np.float32)
    padded[:m] = a
    return np.ascontiguousarray(padded.reshape(mp // block, block, k).transpose(0, 2, 1))


class Conv2d:
    """Convolution on [C][N][H][W] activations, bias and ReLU fused in the GEMM.

    Where a B panel (K x NB floats) fits the device's local memory (CPUs), the
    convolution runs as one implicit-GEMM kernel that gathers its panel from the
    zero-padded input: no im2col matrix goes through memory (it cost as much as the
    GEMM itself at batch 8). Elsewhere it falls back to im2col + GEMM.
    """

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
        implicit: bool | None = None,
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
        self.blocks = -(-self.mg // 8)
        self.nv = 3  # 8 x 48 blocks: the fastest shape measured on PoCL's CPU device
        self.nb = 16 * self.nv
        bias = np.zeros(self.m, np.float32) if bias is None else bias.astype(np.float32)
        wg = weight.reshape(groups, self.mg, self.k).astype(np.float32)
        self.a = [device.upload(pack_rows(wg[g])) for g in range(groups)]
        self.bias = [device.upload(bias[g * self.mg : (g + 1) * self.mg]) for g in range(groups)]
        self.weight_bytes = sum(a.size for a in self.a) + 4 * self.m
        self.panel_bytes = 4 * self.k * self.nb
        local_mem = device.cl_device.local_mem_size
        if implicit is None:
            implicit = device.is_cpu and self.panel_bytes <= local_mem
        self.implicit = implicit
        defines = {"NV": self.nv, "RELU": relu}
        if self.implicit:
            self.conv = device.kernel("gemm.cl", "conv_packed", defines)
            self.pad = device.kernel("im2col.cl", "pad2d") if self.ph or self.pw else None
        else:
            self.gemm = device.kernel("gemm.cl", "gemm_packed", defines)
            self.im2col = device.kernel("im2col.cl", "im2col_packed", {"NB": self.nb})
            self.im2col_tail = device.kernel("im2col.cl", "im2col_tail", {"NB": self.nb})

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.m, self.oh, self.ow)

    def panels(self, n: int) -> int:
        return -(-n * self.oh * self.ow // self.nb)

    def scratch_bytes(self, n: int) -> int:
        if self.implicit:
            padded = (self.h + 2 * self.ph) * (self.w + 2 * self.pw)
            return 4 * self.c * n * padded if self.pad is not None else 0
        return self.panels(n) * self.k * self.nb * 4

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        if self.implicit:
            self._implicit(n, x, y, scratch)
        else:
            self._im2col(n, x, y, scratch)

    def _implicit(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        hp, wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        if self.pad is not None:
            self.device.launch(
                self.pad, (wp, hp, self.c * n), None, x, scratch,
                I32(self.h), I32(self.w), I32(self.ph), I32(self.pw),
            )  # fmt: skip
            x = scratch
        panels, cols = self.panels(n), n * self.oh * self.ow
        # Few panels (small batch, small images): split the row blocks too, so every
        # core gets work; each part gathers its own copy of the panel.
        parts = min(self.blocks, -(-MIN_ITEMS // panels))
        per_item = -(-self.blocks // parts)
        parts = -(-self.blocks // per_item)
        local = cl.LocalMemory(self.panel_bytes)
        for g in range(self.groups):
            self.device.launch(
                self.conv, (panels, parts), (1, 1),
                I32(self.mg), I32(cols), I32(self.k), self.a[g], x, self.bias[g],
                y, I32(cols), I32(g * self.mg), I32(n), I32(hp), I32(wp), I32(g * self.cg),
                I32(self.kh), I32(self.kw), I32(self.sh), I32(self.sw),
                I32(self.oh), I32(self.ow), I32(per_item), local,
            )  # fmt: skip

    def _im2col(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        panels, cols = self.panels(n), n * self.oh * self.ow
        for g in range(self.groups):
            self.device.launch(
                self.im2col, (-(-self.k // 16) * 16, n * self.oh), (16, 1), x, scratch,
                I32(n), I32(self.h), I32(self.w), I32(g * self.cg),
                I32(self.kh), I32(self.kw), I32(self.sh), I32(self.sw),
                I32(self.ph), I32(self.pw), I32(self.oh), I32(self.ow), I32(self.k),
            )  # fmt: skip
            if cols % self.nb:
                self.device.launch(
                    self.im2col_tail, (self.k,), None, scratch, I32(self.k), I32(cols)
                )
            self.device.launch(
                self.gemm, (self.blocks, panels, 1), (1, 1, 1),
                I32(self.mg), I32(cols), I32(self.k), self.a[g], scratch, self.bias[g],
                y, I32(cols), I32(g * self.mg), I32(0), I32(0), I32(0),
            )  # fmt: skip
