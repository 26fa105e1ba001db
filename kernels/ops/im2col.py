"""Conv2d's im2col + GEMM path (kernels/cl/im2col.cl, gemm.cl's gemm_packed), for
devices whose local memory cannot hold an implicit GEMM's panel: the columns go
through memory, in `scratch`."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.blocking import LANES

I32 = np.int32


def im2col_conv(conv: Any, n: int, x: Any, y: Any, scratch: Any) -> None:
    """Enqueue Conv2d `conv` for n images by im2col + GEMM, group by group."""
    cols = n * conv.oh * conv.ow
    nv = conv.panel_nv(n)
    nb, panels, kern = LANES * nv, -(-cols // (LANES * nv)), conv.kernels(nv)
    for g in range(conv.groups):
        conv.device.launch(
            kern["im2col"],
            (-(-conv.k // 16) * 16, n * conv.oh),
            (16, 1),
            x,
            scratch,
            I32(n),
            I32(conv.h),
            I32(conv.w),
            I32(g * conv.cg),
            I32(conv.kh),
            I32(conv.kw),
            I32(conv.sh),
            I32(conv.sw),
            I32(conv.ph),
            I32(conv.pw),
            I32(conv.oh),
            I32(conv.ow),
            I32(conv.k),
            *conv.qargs,
        )
        if cols % nb:
            conv.device.launch(
                kern["tail"],
                (conv.k,),
                conv.device.work_group(conv.k),
                scratch,
                I32(conv.k),
                I32(cols),
            )
        conv.device.launch(
            kern["gemm"],
            (conv.blocks, panels, 1),
            conv.device.each_alone(3),
            I32(conv.mg),
            I32(cols),
            I32(conv.k),
            conv.a[g],
            scratch,
            conv.bias[g],
            conv.scale[g],
            y,
            I32(cols),
            I32(g * conv.mg),
            I32(0),
            I32(0),
            I32(0),
        )
