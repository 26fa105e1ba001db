"""The interface every layer launcher shares (what a network step calls)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.precision import Precision, Prepared
from kernels.runtime import Device
from kernels.tuning import bucket


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


class PerBatch(Launcher):
    """One layer built in more than one form (the tuner found different winners for
    different batch buckets): each batch runs its bucket's form, or the nearest
    bucket's. The weights are held once per form."""

    def __init__(self, forms: dict[int, Launcher]) -> None:
        self.forms = dict(sorted(forms.items()))
        distinct = list({id(f): f for f in self.forms.values()}.values())
        first = distinct[0]
        self.weight_bytes = sum(f.weight_bytes for f in distinct)
        self.weight_count, self.bits_per_weight = first.weight_count, first.bits_per_weight
        self.out_shape = first.out_shape

    def form(self, n: int) -> Launcher:
        b = bucket(n)
        return self.forms.get(b) or self.forms[min(self.forms, key=lambda k: abs(k - b))]

    def scratch_bytes(self, n: int) -> int:
        return self.form(n).scratch_bytes(n)

    def runs_at(self, n: int) -> bool:
        return self.form(n).runs_at(n)

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        self.form(n)(n, x, y, scratch)


def at_batch(op: Launcher, n: int) -> Launcher:
    """The launcher that runs batch n: a PerBatch's form for it, else `op`."""
    return op.form(n) if isinstance(op, PerBatch) else op


class Tuned:
    """A launcher whose kernel parameters are tuning data (kernels/tuning.py): the
    device's entry for (`op`, `shape`, precision, batch bucket), or `params` where the
    launcher was given them (the tuner's candidate). Subclasses set the attributes
    below in their constructor (`tuned_init`)."""

    op: str = ""
    device: Device
    precision: Precision
    params: dict[str, Any] | None = None
    shape: str = ""

    def tuned_init(self, shape: str, params: dict[str, Any] | None) -> None:
        self.shape, self.params = shape, params
        self._tuned: dict[int, dict[str, Any]] = {}

    def effective(self, n: int) -> dict[str, Any]:
        """The parameters the launcher runs with at batch n, tuned or built-in (what
        tells the tuner two candidates are one kernel)."""
        raise NotImplementedError

    def tuned(self, n: int) -> dict[str, Any]:
        if self.params is not None:
            return self.params
        found = self._tuned.get(bucket(n))
        if found is None:
            found, _ = self.device.tuning.lookup(self.op, self.shape, self.precision.name, n)
            self._tuned[bucket(n)] = found
        return found


def quantize_args(device: Device, prepared: Prepared, segments: Any = None) -> tuple[Any, ...]:
    """The arguments of the kernels that quantise a layer's input (precision.h's QARGS):
    its qinv and qzero, or for a mixture's grouped experts each expert's (uploaded),
    with the segment table that says whose each image is."""
    if segments is None:
        return (prepared.qinv, prepared.qzero)
    qparams = prepared.qparams()
    return (device.upload(qparams), segments, np.int32(len(qparams)))
