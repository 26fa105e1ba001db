"""One weight store for two precisions (the on-line precision switch of Park et al.'s
dual-precision networks).

int16 weights live on the device as two byte planes, q = 256 * high + low
(kernels/precision.py's `split_planes`). A model held at int16 and at int8 keeps one
copy: a `PlaneStore`, shared by the launchers of both, uploads each layer's planes
once, for whichever precision is built first. int16 launchers read both planes; int8
launchers read the high plane alone as int8 weights at 256 times int16's scale
(`Precision.high_plane_weights`), so a request switches precision with no reload and
no second copy. The bytes are counted once, by the int16 launcher, whichever
precision was built first.
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
        self,
        device: Device,
        key: str,
        w: np.ndarray,
        precision: Precision,
        layout: Layout = as_is,
        low_layout: Layout | None = None,
        scale: np.ndarray | None = None,
    ) -> tuple[Any, int]:
        """(buffer, bytes to count) of the planes of [M][K] float weights `w` (or int16's
        integers, with their rows' `scale`) under `key`: uploaded on the first call, in
        the kernels' layouts (`device_form`), shared after it. int16 counts the planes'
        bytes, int8 none."""
        found = self._buffers.get(key)
        if found is None:
            owner = precision if precision.planes else get_precision(precision.high_plane_of)
            form = owner.device_form(owner.integers(w, scale, key)[0], layout, low_layout)
            found = self._buffers[key] = (device.upload(form), device, form.nbytes)
        buffer, where, nbytes = found
        if where != device:
            raise ValueError(f"{key}: a weight store serves one device")
        return buffer, nbytes if precision.planes else 0

    def __len__(self) -> int:
        return len(self._buffers)


def upload_weights(
    device: Device,
    precision: Precision,
    q: np.ndarray,
    layout: Layout = as_is,
    shared: tuple[PlaneStore, str, np.ndarray, np.ndarray | None] | None = None,
    low_layout: Layout | None = None,
) -> tuple[Any, int]:
    """(buffer, bytes to count) of a layer's weights `q` as its kernel reads them, in
    `layout` (`device_form`); `shared` (store, key, the weights, their rows' scales
    where they are int16's integers already): from the store instead."""
    if shared is not None:
        store, key, w, scale = shared
        return store.planes(device, key, w, precision, layout, low_layout, scale)
    form = precision.device_form(q, layout, low_layout)
    return device.upload(form), form.nbytes
