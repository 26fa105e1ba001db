"""Conv2d's int8 path with the output channels in the lanes (kernels/cl/conv_lanes.cl):
on VNNI, each input int (four channels of a pixel) broadcast against sixteen output
channels' weights; no panel gathered, an output pixel's channels stored together."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.blocking import LANE_BLOCK

I32 = np.int32
MOST_PIXELS = 14  # 2 x 14 int16 sums, two weight vectors and a broadcast: 31 registers
# The default takes it from runs of this many pixels on: fewer sums a broadcast pay
# less (Fashion-MNIST's 6 x 6 conv3-conv5 at batch 1: 1.25-1.32x the implicit GEMM,
# which gathers 48 columns for 36 pixels; at batch 8 even).
FEWEST_PIXELS = 6
# ... and from this K (taps x channels) on: below it the epilogue, sixteen channels of a
# pixel at a time, weighs more than the panel the implicit GEMM gathers (Fashion-MNIST's
# conv2, K = 288, ran 1.4-1.7x slower; AlexNet's conv2-conv5 have K = 1600-3456,
# Fashion-MNIST's conv3-conv5 1728-2880).
FEWEST_K = 1024
# A work-item takes blocks of channels until it has this many vpdpbusd to run, so that
# starting it (on PoCL a work-group of its own) is paid over enough work.
ITEM_DOTS = 8192


def lane_pixels(ow: int) -> int:
    """Pixels of a row a work-item takes: the largest divisor of the row's `ow` up to
    MOST_PIXELS (so that no work-item runs past a row's end)."""
    return max(p for p in range(1, min(ow, MOST_PIXELS) + 1) if ow % p == 0)


def lanes_fit(conv: Any) -> bool:
    """Whether the default takes this path: whole blocks of LANE_BLOCK output channels
    a group, rows that split into runs of at least FEWEST_PIXELS, K of FEWEST_K on."""
    k = conv.kh * conv.kw * -(-conv.cg // 4) * 4
    return conv.mg % LANE_BLOCK == 0 and lane_pixels(conv.ow) >= FEWEST_PIXELS and k >= FEWEST_K


def choose_lanes(conv: Any, asked: bool | None, eligible: bool) -> bool:
    """Whether Conv2d `conv` runs here: as `asked` (None: where `lanes_fit`), if it is
    `eligible` (int8's implicit GEMM on VNNI, not a store's nor grouped experts'), with
    whole blocks of LANE_BLOCK output channels a group; else a ValueError if asked."""
    if asked and not (eligible and conv.mg % LANE_BLOCK == 0):
        raise ValueError(
            "lanes needs an int8 implicit convolution on VNNI, not a store's or grouped "
            f"experts', with whole {LANE_BLOCK}s of output channels a group"
        )
    return eligible and (lanes_fit(conv) if asked is None else asked)


def lanes_kernel(conv: Any, out_pad: tuple[int, int] | None) -> Any:
    """The kernel for Conv2d `conv`, its geometry compiled in (immediate offsets for the
    broadcasts); `out_pad`: writing the next layer's bytes, padded so."""
    defines = {
        **conv.defines,
        "RELU": conv.relu,
        "OH": conv.oh,
        "OW": conv.ow,
        "HP": conv.h + 2 * conv.ph,
        "WP": conv.w + 2 * conv.pw,
        "SH": conv.sh,
        "SW": conv.sw,
        "KH": conv.kh,
        "KW": conv.kw,
        "CP": conv.groups * conv.cg4,
        "CG4": conv.cg4,
        "P": lane_pixels(conv.ow),
    }
    if out_pad is not None:
        defines.update(BYTES_OUT=1, OPH=out_pad[0], OPW=out_pad[1])
    return conv.device.kernel("conv_lanes.cl", "conv_lanes", defines)


def lanes_conv(conv: Any, n: int, x: Any, y: Any, requant: tuple[Any, ...] = ()) -> None:
    """Enqueue Conv2d `conv` for n images from its padded input bytes x, group by
    group; `requant` (Conv2d.requantizer): write the next convolution's input bytes
    instead of floats."""
    kernel = conv.kernels(0, requant[0] if requant else None)["lanes"]  # no panel: nv 0
    # Bytes out: C is the consumer's pixels, ldc their channels (all groups').
    ldc, qout = (conv.m, requant[1:]) if requant else (n * conv.oh * conv.ow, ())
    pixels = lane_pixels(conv.ow)
    runs, blocks = n * conv.oh * (conv.ow // pixels), conv.mg // LANE_BLOCK
    dots = 2 * pixels * conv.kh * conv.kw * conv.cg4 // 4  # a block's, for P pixels
    each = min(blocks, -(-ITEM_DOTS // dots))
    for g in range(conv.groups):
        conv.device.launch(
            kernel,
            (runs, -(-blocks // each)),
            (1, 1),
            conv.a[g],
            x,
            conv.bias[g],
            conv.scale[g],
            conv.corr[g],
            y,
            I32(ldc),
            I32(g * conv.mg),
            I32(g * conv.cg4),
            I32(conv.mg),
            I32(each),
            *qout,
        )
