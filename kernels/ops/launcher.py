"""The interface every layer launcher shares (what a network step calls)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.precision import Prepared
from kernels.runtime import Device


class Launcher:
    """One layer compiled for a device: built once (kernels compiled, weights packed and
    uploaded), then `launcher(n, x, y, scratch)` enqueues it for a batch of n images,
    reading device buffer x and writing y (scratch: `scratch_bytes(n)` bytes)."""

    weight_bytes: int = 0  # device bytes the layer's weights hold
    weight_count: int = 0  # the layer's weights (its filters' or matrix's entries)
    bits_per_weight: float = 0.0  # as stored: the precision's, or packed (bitgroups.py)

    def scratch_bytes(self, n: int) -> int:
        return 0

    def runs_at(self, n: int) -> bool:
        """False where the layer's output is its input, unchanged (the step is skipped)."""
        return True

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        raise NotImplementedError


def quantize_args(device: Device, prepared: Prepared, segments: Any = None) -> tuple[Any, ...]:
    """The arguments of the kernels that quantise a layer's input (precision.h's QARGS):
    its qinv and qzero, or for a mixture's grouped experts each expert's (uploaded),
    with the segment table that says whose each image is."""
    if segments is None:
        return (prepared.qinv, prepared.qzero)
    qparams = prepared.qparams()
    return (device.upload(qparams), segments, np.int32(len(qparams)))
