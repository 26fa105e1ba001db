"""The pass in front of a convolution (kernels/cl/im2col.cl): the input zero-padded, and
for quantised precisions quantised once per value, so that the convolution's kernels
gather without bounds checks and only copy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl

from kernels.runtime import Device

I32 = np.int32
ITEMS = 32  # pad2d_channels' work-items (rows each: enough to repay starting one)


class ConvPad:
    """[C][N][H][W] floats -> the padded input a convolution reads:
    - `pad2d`: [C][N][HP][WP] floats (quantised precisions: the offsets q - zero);
    - DOT4's direct convolution (`direct`, `pad2d_direct`): [C][N][HP][WP] ints, each a
      pixel's byte q + 128 and the next three along its row; with a stride of 4 along
      rows (`row_ints`), [C][N][HP][4 * row_ints] bytes;
    - DOT4 (int8 on VNNI): [N][HP][WP][CP] bytes q + 128, each group's `cg` channels
      padded to `cg4`; `pad2d_channels`, 16 channels of a pixel at a time, where the
      groups hold whole fours (every layer but a network's first), else
      `pad2d_pixels`.
    `qargs`: precision.h's QARGS (`launcher.quantize_args`)."""

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        padding: tuple[int, int],
        defines: dict[str, Any],
        qargs: tuple[Any, ...],
        cg: int,
        cg4: int,
        direct: bool = False,
        row_ints: int = 0,
    ) -> None:
        self.device = device
        self.c, self.h, self.w = in_shape
        self.ph, self.pw = padding
        self.hp, self.wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        self.qargs, self.cg, self.cg4 = qargs, cg, cg4
        self.dot4 = bool(defines.get("DOT4"))
        self.row_ints = row_ints
        self.windows = self.dot4 and direct and not row_ints
        self.channels4 = self.dot4 and not direct and cg % 4 == 0
        if self.windows or row_ints:
            name, defines = "pad2d_direct", {**defines, "WINDOWS": int(self.windows)}
        elif self.dot4:
            name = "pad2d_channels" if self.channels4 else "pad2d_pixels"
        else:
            name = "pad2d"
        self.kernel = device.kernel("im2col.cl", name, defines)
        self.defines = defines
        self._gather: Any = None  # pad2d_channels built with GATHER, once asked for

    @property
    def reads_nchw(self) -> bool:
        """Whether the pass can read images as they come, [N][C][H][W] (pad2d_direct)."""
        return self.windows or bool(self.row_ints)

    def nbytes(self, n: int) -> int:
        """The padded input of n images."""
        if self.row_ints:
            return 4 * self.c * n * self.hp * self.row_ints
        if self.dot4 and not self.windows:
            return n * self.hp * self.wp * self.c // self.cg * self.cg4
        return 4 * self.c * n * self.hp * self.wp

    def __call__(
        self, n: int, x: Any, out: Any, nchw: bool = False, gather: tuple[Any, int, int] = ()
    ) -> None:
        """`nchw`: x is the images as they come, [N][C][H][W] (`reads_nchw` only).
        `gather` (images, batch, first): x holds `batch` images [C][batch][H][W] and row
        b of the output is image images[first + b] (int32 device buffer; `channels4`
        only), as a mixture's routed rows are."""
        if nchw and not self.reads_nchw:
            raise ValueError(f"{self.kernel.function_name} reads [C][N][H][W] input only")
        if gather and not self.channels4:
            raise ValueError(f"{self.kernel.function_name} cannot gather its rows")
        kernel = self.kernel
        if gather:
            if self._gather is None:
                defines = {**self.defines, "GATHER": 1}
                self._gather = self.device.kernel("im2col.cl", "pad2d_channels", defines)
            images, batch, first = gather
            kernel, gather = self._gather, (images, I32(batch), I32(first))
        d, geometry = self.device, (I32(self.h), I32(self.w), I32(self.ph), I32(self.pw))
        if self.channels4:
            rows, blocks = self.hp * n, -(-self.c // 16)
            each = max(1, rows * blocks // ITEMS)
            grid, local = (-(-rows // each), blocks), d.each_alone(2)
            args: tuple[Any, ...] = (I32(self.c), I32(n), I32(each))
        elif self.windows or self.row_ints:
            rows = self.c * n * self.hp
            each = max(1, rows // ITEMS)
            grid, local = (-(-rows // each),), d.each_alone(1)
            wr = 4 * self.row_ints or self.wp + 3  # a padded row's bytes
            line = cl.LocalMemory(wr + 16 if self.windows else 1)
            args = (I32(n), I32(wr), I32(rows), I32(each), line, I32(self.c if nchw else 0))
        elif self.dot4:
            grid, local = (self.hp, n), d.work_group(self.hp, 1)
            args = (I32(self.c), I32(n), I32(self.cg), I32(self.cg4))
        else:
            grid, local = (self.hp, self.c * n), d.work_group(self.hp, self.c)
            args = (I32(n),)
        d.launch(kernel, grid, local, x, out, *geometry, *args, *self.qargs, *gather)
