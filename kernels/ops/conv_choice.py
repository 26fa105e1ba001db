"""The convolution launcher of a layer: the algorithm the device's tuning chose for it,
a tuner's candidate, or the built-in choice (`conv2d`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.ops.conv import Conv2d
from kernels.ops.launcher import Launcher, PerBatch
from kernels.ops.store import PlaneStore
from kernels.ops.tiled import TiledConv2d
from kernels.ops.winograd import TILE, WINOGRAD_5X5_CHANNELS, WinogradConv2d, winograd_fits
from kernels.precision import FP32, Precision
from kernels.runtime import Device
from kernels.tuning import conv_shape

# Grouped 3x3 layers with outputs at most this wide run F(2x2, 3x3): on a 6 x 6 map
# both tiles cost the same multiplies (4x4 tiles cover 8 x 8), but 2x2 tiles give 9
# GEMM columns an image instead of 4, so fewer panels straddle two experts (a
# straddling panel runs once per expert); a plain network's layers gained nothing.
GROUPED_SMALL_TILE_MAX = 8
# Conv2d's (direct, implicit, lanes) for a named algorithm (None: its defaults).
PATHS = {
    None: (None, None, None),
    "direct": (True, None, None),
    "implicit": (False, True, False),
    "lanes": (False, True, True),
}


def conv2d(
    device: Device,
    in_shape: tuple[int, int, int],
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    groups: int = 1,
    relu: bool = False,
    precision: Precision = FP32,
    input_range: Any = None,
    store: PlaneStore | None = None,
    key: str = "",
    weight_scale: np.ndarray | None = None,
    segments: Any = None,
    params: dict[str, Any] | None = None,
) -> Launcher:
    """The convolution launcher for a layer: the algorithm the device's tuning chose
    for it (kernels/tuning.py; one form per batch bucket where the winners differ), or
    `params["algorithm"]` (the tuner's candidate), else the built-in choice: Winograd
    F(4x4, r x r) for stride-1 ungrouped layers with 3x3 filters or 5x5 ones over at
    least WINOGRAD_5X5_CHANNELS input channels (4 multiplies an output instead of 25;
    with fewer channels the transforms cost more than the multiplies saved, and
    F(2x2, 5x5) saved too few to pay for them at all), the direct or implicit GEMM
    otherwise (Conv2d). "tiled": the tiled GEMM (kernels/ops/tiled.py), which the
    built-in choice never takes. Quantised precisions never run Winograd: its
    transforms would turn exact integer products into rounded float ones.

    `segments`: a mixture's experts in one set of launches (`weight` [E][M][C][r][r],
    `input_range` one per expert): built in, Winograd at floating-point precisions,
    which only the layers it fits have (small maps with 3x3 filters take 2x2 tiles),
    and the implicit GEMM at quantised ones (Conv2d); tuned, either where it fits.
    Layers read from a store (int16, int8) keep the built-in choice."""
    winograd = winograd_fits(weight.shape[-4:], stride, groups) and not precision.quantized
    if segments is not None and not winograd and not precision.quantized:
        raise ValueError(
            "grouped experts need stride-1 ungrouped 3x3 convolutions, or 5x5 ones over "
            f"at least {WINOGRAD_5X5_CHANNELS} channels, at floating-point precisions"
        )

    def build(algorithm: str | None) -> Launcher:
        if segments is not None and algorithm not in (None, "winograd", "implicit"):
            raise ValueError(f"grouped experts run Winograd or the implicit GEMM, not {algorithm}")
        if algorithm == "winograd" and not winograd:
            raise ValueError(f"Winograd does not fit this layer at {precision.name}")
        if algorithm == "winograd" or (algorithm is None and winograd):
            r, tile = weight.shape[-1], TILE
            out = max(in_shape[1] + 2 * padding[0], in_shape[2] + 2 * padding[1]) - r + 1
            if segments is not None and r == 3 and out <= GROUPED_SMALL_TILE_MAX:
                tile = 2
            return WinogradConv2d(
                device, in_shape, weight, bias, padding, relu, tile, precision, segments, params
            )
        layer = (device, in_shape, weight, bias, stride, padding, groups, relu)
        quantised = {"input_range": input_range, "weight_scale": weight_scale}
        if algorithm == "tiled":
            return TiledConv2d(*layer, precision=precision, params=params, **quantised)
        direct, implicit, lanes = PATHS.get(algorithm, (False, False, None))  # im2col: none
        return Conv2d(
            *layer,
            implicit=implicit,
            precision=precision,
            direct=direct,
            store=store,
            key=key,
            segments=segments,
            params=params,
            lanes=lanes,
            **quantised,
        )

    if params is not None:
        return build(params.get("algorithm"))
    chosen: dict[int, Any] = {}
    if store is None or not store.serves(precision):  # (a float network beside a store)
        shape = conv_shape(in_shape, weight.shape, stride, padding, groups)
        tuned = device.tuning.buckets("conv", shape, precision.name)
        # Named, a built-in Winograd is the form a bucket tuned to Winograd runs too.
        chosen = {b: p.get("algorithm", "winograd" if winograd else None) for b, p in tuned.items()}
    try:
        forms = {a: build(a) for a in set(chosen.values())}
    except ValueError:  # a tuned form this layer cannot run (a stale database)
        return build(None)
    if len(forms) <= 1:
        return next(iter(forms.values()), None) or build(None)
    return PerBatch({b: forms[a] for b, a in chosen.items()})
