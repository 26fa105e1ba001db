"""Conv2d's direct path (kernels/cl/conv_direct.h): taps read straight from the padded
input, no GEMM panels; for int8 on VNNI, four taps of a filter row a step."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.blocking import LANES

I32 = np.int32
ITEMS_PER_UNIT = 4  # fewer work-items a compute unit than this: split their row blocks


def direct_conv(
    conv: Any,
    n: int,
    x: Any,
    y: Any,
    scratch: Any,
    requant: tuple[Any, ...] = (),
    nchw: bool = False,
) -> None:
    """Enqueue Conv2d `conv` for n images with conv_direct, group by group (its pad
    pass first: ConvPad, reading x as [N][C][H][W] where `nchw`); `requant`
    (Conv2d.requantizer): write the next convolution's input bytes instead of floats."""
    hp, wp = conv.h + 2 * conv.ph, conv.w + 2 * conv.pw
    conv.pad(n, x, scratch, nchw)
    nv = conv.panel_nv(n)
    chunks = -(-conv.ow // (LANES * nv))
    # A work-item runs all its row blocks over the input it reads (10% faster on the
    # Fashion-MNIST conv1, batch 8), unless that leaves too few items to share.
    items = n * conv.oh * chunks
    per_item = conv.blocks if items >= ITEMS_PER_UNIT * conv.device.info.compute_units else 1
    # A step's ints along a row: pad2d_direct's windows hold a pixel and the next three, so
    # a step of four taps is four of them; its bytes under a stride of 4, one.
    step = 4 if conv.dot4 and not conv.rows4 else 1
    # Bytes out: C is the consumer's pixels, ldc their channels (all groups').
    ldc, qout = (conv.m, requant[1:]) if requant else (n * conv.oh * conv.ow, ())
    kernel = conv.kernels(nv, requant[0] if requant else None)["direct"]
    for g in range(conv.groups):
        conv.device.launch(
            kernel,
            (items, -(-conv.blocks // per_item)),
            (1, 1),
            I32(conv.mg),
            I32(conv.cg * conv.kh * conv.kj),
            conv.a[g],
            scratch,
            conv.bias[g],
            conv.scale[g],
            y,
            I32(ldc),
            I32(g * conv.mg),
            I32(n),
            I32(hp),
            I32(conv.row_ints or wp),
            I32(g * conv.cg),
            I32(conv.kh),
            I32(conv.kj),
            I32(conv.sh),
            I32(step),
            I32(conv.oh),
            I32(conv.ow),
            I32(chunks),
            I32(per_item),
            *((conv.corr[g], *qout) if conv.dot4 else ()),
        )
