"""Layout change, ReLU, softmax and the mixture merge (kernels/cl/elementwise.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.ops.launcher import Launcher
from kernels.runtime import Device

I32 = np.int32


class SwapOuter:
    """[A][B][inner] -> [B][A][inner]; with A=N, B=C it turns NCHW into CNHW.
    `batch_outer`: whether A (else B) is the batch."""

    def __init__(self, device: Device, inner: int, batch_outer: bool) -> None:
        self.device, self.inner, self.batch_outer = device, inner, batch_outer
        self.kernel = device.kernel("elementwise.cl", "swap_outer")

    def __call__(self, a: int, b: int, x: Any, y: Any) -> None:
        local = self.device.work_group(*((b, 1) if self.batch_outer else (1, a)))
        self.device.launch(self.kernel, (b, a), local, x, y, I32(a), I32(b), I32(self.inner))


class Flatten(Launcher):
    """[C][N][H][W] -> [N][C*H*W] (PyTorch's flatten order for the fc layers); one image
    is laid out alike in both, so at batch 1 nothing runs."""

    def __init__(self, device: Device, shape: tuple[int, ...]) -> None:
        self.c, self.inner = shape[0], int(np.prod(shape[1:]))
        self.swap = SwapOuter(device, self.inner, batch_outer=False)

    def runs_at(self, n: int) -> bool:
        return n > 1

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        self.swap(self.c, n, x, y)


class Relu(Launcher):
    def __init__(self, device: Device, features: int) -> None:
        self.device, self.features = device, features
        self.kernel = device.kernel("elementwise.cl", "relu")

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        total = n * self.features
        local = self.device.work_group(self.features)
        self.device.launch(self.kernel, (total,), local, x, y, I32(total))


class Softmax(Launcher):
    """Softmax over the features of each image ([N][F])."""

    def __init__(self, device: Device, features: int) -> None:
        self.device, self.features = device, features
        self.kernel = device.kernel("elementwise.cl", "softmax")

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        local = self.device.work_group(1)
        self.device.launch(self.kernel, (n,), local, x, y, I32(self.features))


class Merge:
    """Gate-weighted sum of expert output rows: the combine step of the mixture."""

    def __init__(self, device: Device, features: int) -> None:
        self.device, self.features = device, features
        self.kernel = device.kernel("elementwise.cl", "merge")

    def __call__(self, n: int, topk: int, outputs: Any, idx: Any, gates: Any, y: Any) -> None:
        self.device.launch(
            self.kernel,
            (self.features, n),
            self.device.work_group(self.features, 1),
            outputs,
            idx,
            gates,
            y,
            I32(self.features),
            I32(topk),
        )


class GatherImages:
    """[C][N][inner] -> [C][M][inner], keeping the images idx[first:first + M] (int32);
    with `batch` > M, into a [C][batch][inner] tensor whose last images are padding."""

    def __init__(self, device: Device, channels: int, inner: int) -> None:
        self.device, self.channels, self.inner = device, channels, inner
        self.kernel = device.kernel("elementwise.cl", "gather_images")

    def __call__(
        self, n: int, m: int, x: Any, idx: Any, y: Any, first: int = 0, batch: int | None = None
    ) -> None:
        self.device.launch(
            self.kernel,
            (m, self.channels),
            self.device.work_group(1, self.channels),
            x,
            y,
            idx,
            I32(first),
            I32(n),
            I32(m),
            I32(m if batch is None else batch),
            I32(self.inner),
        )


class TopKBuckets:
    """Top-k of each row of [N][E] scores and the (row, rank) pairs sorted by bucket,
    on the device (twin: kernels.reference.topk_buckets). Outputs, all int32 but the
    float32 weights: weight [N*k], start [E + 1], src and dst [N*k]; and the report the
    host reads in one copy (`report_size` floats from `at` on; `split` takes it apart)."""

    def __init__(self, device: Device, buckets: int) -> None:
        self.device, self.buckets = device, buckets
        self.kernel = device.kernel("elementwise.cl", "topk_buckets", {"BUCKETS": buckets})

    def report_size(self, n: int, k: int) -> int:
        return n * (self.buckets + 2 * k)

    def split(self, report: np.ndarray, n: int, k: int) -> tuple[np.ndarray, ...]:
        """A report read back -> the scores [N][E], index and weight [N][k]."""
        e = n * self.buckets
        index = report[e : e + n * k].view(np.int32).reshape(n, k)
        return report[:e].reshape(n, -1), index, report[e + n * k :].reshape(n, k)

    def __call__(
        self,
        n: int,
        k: int,
        scores: Any,
        report: Any,
        weight: Any,
        start: Any,
        src: Any,
        dst: Any,
        at: int = 0,
    ) -> None:
        args = (scores, I32(n), I32(k), report, weight, start, src, dst, I32(at))
        self.device.launch(self.kernel, (1,), (1,), *args)
