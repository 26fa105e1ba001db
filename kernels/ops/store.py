"""One weight store for two precisions (the on-line precision switch of Park et al.'s
dual-precision networks).

int16 weights live on the device as two byte planes, q = 256 * high + low
(kernels/precision.py's `split_planes`). A model held at int16 and at int8 keeps one
copy: a `PlaneStore`, shared by the launchers of both, uploads each layer's planes
once, for whichever precision is built first. int16 launchers read both planes; int8
launchers read the high plane alone as int8 weights at 256 times int16's scale
(`Precision.high_plane_weights`), so a request switches precision with no reload and
no second copy. The bytes are counted once, by the launcher that uploaded them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.precision import Layout, Precision, as_is, get_precision
from kernels.runtime import Device


class PlaneStore:
    """The device buffers of one model's int16 byte planes, by layer key."""

    def __init__(self) -> None:
        self._buffers: dict[str, Any] = {}

    @staticmethod
    def serves(precision: Precision) -> bool:
        """The precision reads a store's planes: int16, or int8 through its high plane."""
        return precision.planes or bool(precision.high_plane_of)

    def planes(
        self, device: Device, key: str, w: np.ndarray, precision: Precision, layout: Layout = as_is
    ) -> tuple[Any, int]:
        """(buffer, bytes uploaded by this call) of the planes of [M][K] float weights
        `w` under `key`: uploaded on the first call, in `layout` (the kernel's), and
        shared after it (0 bytes)."""
        found = self._buffers.get(key)
        if found is not None:
            if found[1] != device:
                raise ValueError(f"{key}: a weight store serves one device")
            return found[0], 0
        owner = precision if precision.planes else get_precision(precision.high_plane_of)
        form = owner.device_form(owner.quantize_weights(w)[0], layout)
        buffer = device.upload(form)
        self._buffers[key] = (buffer, device)
        return buffer, form.nbytes

    def __len__(self) -> int:
        return len(self._buffers)
