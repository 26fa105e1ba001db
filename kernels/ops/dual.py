"""Dual-module inference of a fully connected layer with ReLU (Liu et al., ICML 2020).

A little module estimates every pre-activation from a low-dimensional projection of
the input: z = P x + p (r x I), estimate = A z + c (O x r), two small Linear launches
at the layer's precision. Outputs estimated below the layer's threshold are clearly
negative, so ReLU makes them 0 whatever their exact value: the big layer writes 0 there
without reading their weight rows, and computes the rest exactly (Linear.launch with
`skip`). The big Linear is shared, not copied: a network with and without the little
module holds one set of big weights.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from kernels.ops.launcher import Launcher
from kernels.ops.linear import Linear


class SkipStats(NamedTuple):
    """What the big layer did since the last `take_stats`."""

    images: int
    row_reads: int  # weight rows read (once per tile of images that needed them)
    computed: int  # (image, output) pairs the big layer computed
    outputs: int  # outputs per image
    row_bytes: int  # weight bytes of one row
    big_bytes: int  # weight bytes of the big layer (grouped: of one expert's)
    little_bytes: int  # device bytes of the little module (likewise)

    @property
    def computed_share(self) -> float:
        """The share of outputs the big module computed (1 - the skip rate)."""
        return self.computed / max(1, self.images * self.outputs)

    @property
    def big_bytes_per_image(self) -> float:
        """Big-layer weight bytes read per image (rows are read once per tile of images)."""
        return self.row_reads * self.row_bytes / max(1, self.images)

    @property
    def read_share_at_batch_1(self) -> float:
        """Weight bytes read per image at batch 1, little module included, as a share of
        the plain layer's: the big rows computed plus the little module."""
        return self.computed_share + self.little_bytes / self.big_bytes

    def as_dict(self) -> dict[str, float]:
        return {
            "computed_share": round(self.computed_share, 5),
            "big_bytes_per_image": round(self.big_bytes_per_image, 1),
            "big_bytes": self.big_bytes,
            "little_bytes": self.little_bytes,
            "read_share_at_batch_1": round(self.read_share_at_batch_1, 5),
        }


class DualLinear(Launcher):
    def __init__(
        self, big: Linear, project: Linear, little: Linear, thresholds: np.ndarray
    ) -> None:
        if not big.relu:
            raise ValueError("dual-module inference needs the layer's ReLU")
        if project.o != little.i or little.o != big.o or project.i != big.i:
            raise ValueError(
                f"little module {project.i}->{project.o}->{little.o} does not fit "
                f"the layer's {big.i}->{big.o}"
            )
        thresholds = np.asarray(thresholds, np.float32).reshape(-1)
        if len(thresholds) != big.experts:
            raise ValueError(f"{len(thresholds)} thresholds for {big.experts} experts")
        self.device = device = big.device
        self.big, self.project, self.little = big, project, little
        self.threshold = device.upload(thresholds)
        self.stats = device.upload(np.zeros(3, np.int32))
        self.little_bytes = project.weight_bytes + little.weight_bytes + thresholds.nbytes
        self.weight_bytes = big.weight_bytes + self.little_bytes
        self._estimates: dict[int, tuple[Any, Any]] = {}

    @property
    def out_shape(self) -> tuple[int]:
        return self.big.out_shape

    def scratch_bytes(self, n: int) -> int:
        return max(op.scratch_bytes(n) for op in (self.big, self.project, self.little))

    def _buffers(self, n: int) -> tuple[Any, Any]:
        """The projection [n][r] and the estimates [n][O] for batch size n."""
        found = self._estimates.get(n)
        if found is None:
            found = self._estimates[n] = (
                self.device.alloc(4 * n * self.project.o),
                self.device.alloc(4 * n * self.big.o),
            )
        return found

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        z, estimate = self._buffers(n)
        with self.device.labelled("little"):
            self.project(n, x, z, scratch)
            self.little(n, z, estimate, scratch)
        self.big.launch(n, x, y, scratch, (estimate, self.threshold, self.stats))

    def take_stats(self) -> SkipStats:
        """The counts since the last call (waits for the queue), and starts them again."""
        row_reads, images, computed = (int(v) for v in self.device.read(self.stats, (3,), np.int32))
        self.device.write(self.stats, np.zeros(3, np.int32)).wait()
        big = self.big
        row_bytes = big.i * np.dtype(big.precision.weight_dtype).itemsize
        little = self.little_bytes // big.experts
        return SkipStats(images, row_reads, computed, big.o, row_bytes, row_bytes * big.o, little)
