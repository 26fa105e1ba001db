"""The precision table: one row per precision, read by every launcher.

A precision is data, not a class hierarchy and not a copy of a kernel: a row says how
weights are stored, how the dot products accumulate and what `-D` defines the kernels
are built with (kernels/cl/precision.h turns those into types and macros).

- fp32, fp16: float arithmetic; fp16 halves the bytes of every weight (the fully
  connected layers of AlexNet are 96% of its parameters and, at small batch, bound
  by the memory traffic of reading them).
- int8, int16: symmetric per-output-channel weight scales; each layer's input is
  quantised once, with the scale and zero point its calibrated range gives; the
  products accumulate exactly in integers; the accumulator is dequantised once per
  output (acc * weight_scale * input_scale + bias) into float, which is what the
  next layer, a pool, LRN or softmax, reads. int8 products (at most 127 * 255 <
  2^15) are summed in float registers in chunks of 512 (so every partial sum is an
  integer below 2^24, exact) and flushed into int32: integer results at the speed of
  the float units. On x86 CPUs with AVX-512 VNNI (`Device.dot4`) the int8
  convolutions and fully connected layers multiply bytes instead, 64 products per
  instruction (kernels/cl/gemm.cl's DOT4), to the same int32 sums. int16 products
  need up to 31 bits, so int16 accumulates in int64.
- int16 weights live on the device as two byte planes, q = 256 * high + low with
  high = round(q / 256) (`split_planes`): the kernels read both, and an int8 layer
  can read the high plane alone as int8 weights at 256 times int16's scale, so one
  store serves both precisions (kernels/ops/store.py). For the high byte to stay
  within int8's [-127, 127], int16 weights are quantised to |q| <= 32639 rather than
  32767 (0.4% of the range; their accuracy is int16's, BENCHMARKS.md "Accuracy").
- int8g, int16g: int8's and int16's integers, with the fully connected layers' weights
  packed in groups of 16 at the width each group needs (DPRed; kernels/bitgroups.py).

Every formula here is also what the numpy twins compute (kernels/reference.py), so
the integer results match exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PLANES_MAX = 127 * 256 + 127  # 32639
Layout = Callable[[np.ndarray], np.ndarray]  # a weight matrix as a kernel reads it


def as_is(a: np.ndarray) -> np.ndarray:
    """The identity `Layout`: a matrix read as it is stored."""
    return a


def split_planes(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int16 weights (|q| <= 32639) -> (high, low) int8 planes, q = 256 * high + low,
    high = round(q / 256) (halves up) and low in [-128, 127]. Rounding rather than
    truncating keeps the high plane as accurate as int8 on its own
    (docs/benchmark-log.md, "one weight store for int16 and int8")."""
    q = np.asarray(q, np.int32)
    if q.size and np.abs(q).max() > PLANES_MAX:
        raise ValueError(f"weights beyond +-{PLANES_MAX} do not split into two byte planes")
    high = (q + 128) >> 8
    return high.astype(np.int8), (q - (high << 8)).astype(np.int8)


@dataclass(frozen=True)
class Prepared:
    """A [M][K] weight matrix as the GEMM and linear kernels take it. A mixture's
    grouped experts (`Precision.prepare_experts`) stack theirs: E * M rows, and qinv
    and qzero one per expert."""

    weights: np.ndarray  # [M][K] in the precision's storage dtype
    scale: np.ndarray  # [M] float32: multiplies each row's accumulator (1 for floats)
    qinv: np.float32 | np.ndarray  # 1 / input scale (quantised rows; 1 for floats)
    qzero: np.float32 | np.ndarray  # input zero point (0 for floats)

    def qparams(self) -> np.ndarray:
        """[E][2] float32, each expert's (qinv, qzero): precision.h's QARGS, grouped."""
        return np.stack([np.atleast_1d(self.qinv), np.atleast_1d(self.qzero)], 1).astype(np.float32)

    @property
    def nbytes(self) -> int:
        """Resident bytes (the scales are uploaded for every precision)."""
        return self.weights.nbytes + self.scale.nbytes

    def byte_offset_correction(self) -> np.ndarray:
        """[M] int32 for int8 rows read against inputs stored as unsigned bytes q + 128
        (kernels/cl/gemm.cl's DOT4) rather than q - zero: what each row's sum then
        gains, (128 + zero) * the sum of its weights, for the kernel to take back off."""
        zero = np.atleast_1d(self.qzero).astype(np.int32)
        rows = np.repeat(zero, len(self.weights) // len(zero))  # grouped: an expert's rows
        return (128 + rows) * self.weights.sum(axis=1, dtype=np.int32)


@dataclass(frozen=True)
class Precision:
    """One row of the table. The launchers read these columns; none re-derives them."""

    name: str
    weight_dtype: Any  # numpy dtype the weights are stored in on the device
    bits: int  # integer bits of a quantised precision; 0 for floating point
    accumulate: str  # what the dot products accumulate in
    accumulator_limit: int | None  # largest sum the integer accumulator holds (None: float)
    byte_dot: bool  # may multiply bytes on the CPU's dot-product units (int8 on VNNI)
    grouped: bool  # a mixture's experts can run this layer grouped, in one launch
    # How close to fp32 its answers are (higher: closer), from the shipped models'
    # top-1 (BENCHMARKS.md, "Accuracy"): the order precision=auto tries them in.
    fidelity: int = 0
    planes: bool = False  # weights stored as two byte planes (int16; `split_planes`)
    # Fully connected weights packed in groups of 16 at the width each group needs
    # (kernels/bitgroups.py); the integers, and so every sum, are the base precision's.
    packed: bool = False
    # Where one store holds both (kernels/ops/store.py): reads the high plane of this
    # precision's weights (int8: int16's).
    high_plane_of: str = ""
    description: str = ""

    @property
    def defines(self) -> dict[str, int]:
        """The -D defines kernels/cl/precision.h turns into types and macros."""
        return {"WEIGHT_HALF": int(self.weight_dtype is np.float16), "QBITS": self.bits}

    @property
    def wide_accumulator(self) -> bool:
        """64-bit accumulator lanes: half as many fit in registers as 32-bit ones."""
        return self.accumulate == "int64"

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    @property
    def weight_max(self) -> int:
        """Largest quantised weight magnitude (symmetric: -qmax .. qmax). Two byte
        planes: the largest whose high byte, round(q / 256), is still 127."""
        return PLANES_MAX if self.planes else 2 ** (self.bits - 1) - 1

    def device_form(
        self, q: np.ndarray, layout: Layout = as_is, low_layout: Layout | None = None
    ) -> np.ndarray:
        """Weights as uploaded, in the kernel's `layout` (e.g. the GEMM's row panels):
        int16 as its high plane followed by its low plane (in `low_layout` if given: only
        int16 reads it, while int8 may read the high one)."""
        if not self.planes:
            return layout(q)
        high, low = split_planes(q)
        return np.concatenate([layout(high).ravel(), (low_layout or layout)(low).ravel()])

    def store(self, weights: np.ndarray) -> np.ndarray:
        """Weights as the device keeps them (floating-point rows only)."""
        if self.quantized:
            raise ValueError(f"{self.name} weights need a scale: use quantize_weights")
        return np.ascontiguousarray(weights, dtype=self.weight_dtype)

    def round_trip(self, weights: np.ndarray) -> np.ndarray:
        """The float32 values the kernels compute with: the numpy twins' weights."""
        if self.quantized:
            q, scale = self.quantize_weights(weights.reshape(weights.shape[0], -1))
            return (q * scale[:, None]).reshape(weights.shape).astype(np.float32)
        return self.store(weights).astype(np.float32)

    def quantize_weights(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[M][K] float -> (q [M][K] in weight_dtype, scale [M] float32), w ~ q * scale.

        Symmetric per output channel: the row's largest magnitude maps to qmax, zero to
        zero (so zero padding and pruned weights stay exact)."""
        w = np.asarray(w, np.float32)
        peak = np.abs(w).max(axis=1) if w.size else np.zeros(len(w), np.float32)
        scale = np.where(peak > 0, peak / self.weight_max, 1.0).astype(np.float32)
        q = w / scale[:, None]  # one float32 temporary, rounded and clipped in place
        np.rint(q, out=q)
        np.clip(q, -self.weight_max, self.weight_max, out=q)
        return q.astype(self.weight_dtype), scale

    def integers(
        self, w: np.ndarray, scale: np.ndarray | None = None, name: str = "layer"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, scale) of [M][K] weights: `quantize_weights` of float ones, or, with the
        rows' `scale` (weights quantised already: a quantised copy on disk, whose reader
        checks their range, experts/model/quantized.py), the integers themselves."""
        if scale is None:
            return self.quantize_weights(w)
        if w.dtype != self.weight_dtype or scale.shape != (len(w),):
            raise ValueError(
                f"{name}: {self.name} needs {np.dtype(self.weight_dtype)} weights and one "
                f"scale a row, got {w.dtype} {w.shape} and scales {scale.shape}"
            )
        return w, np.asarray(scale, np.float32)

    def high_plane_weights(
        self, w: np.ndarray, scale: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`quantize_weights` read from the high byte plane of `high_plane_of`'s weights
        (float, or its integers with their `scale`: `integers`): int8 from int16's, round(q16 / 256)
        at 256 times int16's scale. Within 0.1 point of int8's own weights on the
        shipped models (BENCHMARKS.md, "One store")."""
        if not self.high_plane_of:
            raise ValueError(f"{self.name} reads no other precision's high plane")
        q16, scale16 = get_precision(self.high_plane_of).integers(w, scale)
        return split_planes(q16)[0].astype(self.weight_dtype), scale16 * np.float32(256)

    def activation_params(self, low: float, high: float) -> tuple[float, float]:
        """(scale, zero point) for inputs calibrated to [low, high]: the range is
        widened to hold 0 (padding must quantise exactly) and spread over the full
        signed range [-2^(b-1), 2^(b-1) - 1]; x ~ scale * (q - zero)."""
        lo, hi = min(float(low), 0.0), max(float(high), 0.0)
        qmin, qmax = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        scale = float(np.float32((hi - lo) / (qmax - qmin))) if hi > lo else 1.0
        zero = float(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
        return scale, zero

    def prepare(
        self,
        w: np.ndarray,
        input_range: tuple[float, float] | None = None,
        name: str = "layer",
        high_plane: bool = False,
        scale: np.ndarray | None = None,
    ) -> Prepared:
        """[M][K] float32 weights -> what the kernels read. Quantised rows need the
        calibrated range of the layer's input. `high_plane`: the weights are read from
        the high plane of `high_plane_of`'s (`high_plane_weights`). `scale`: `w` holds
        the integers already, these their rows' scales (`integers`)."""
        ones = np.ones(len(w), np.float32)
        if not self.quantized:
            if scale is not None:
                raise ValueError(f"{name}: {self.name} takes float weights, not quantised ones")
            return Prepared(self.store(w), ones, np.float32(1), np.float32(0))
        if input_range is None:
            raise ValueError(f"{name}: {self.name} needs the calibrated range of its input")
        if high_plane:
            q, weight_scale = self.high_plane_weights(w, scale)
        else:
            q, weight_scale = self.integers(w, scale, name)
        self.check_accumulator(q, name)
        scale, zero = self.activation_params(*input_range)
        return Prepared(
            q, weight_scale * np.float32(scale), np.float32(1 / scale), np.float32(zero)
        )

    def prepare_experts(
        self,
        w: np.ndarray,
        input_ranges: Sequence[tuple[float, float]] | None = None,
        name: str = "layer",
        high_plane: bool = False,
        scale: np.ndarray | None = None,
    ) -> Prepared:
        """A mixture's grouped experts, [E][M][K] float32 weights (or integers, with
        `scale` [E][M]) -> one `Prepared` of their E * M rows, each expert's as `prepare`
        gives them on their own (its rows' scales, its calibrated input range), qinv
        and qzero one per expert."""
        ranges = [None] * len(w) if input_ranges is None else list(input_ranges)
        if input_ranges is not None and np.shape(ranges) != (len(w), 2):
            raise ValueError(
                f"{name}: {len(w)} grouped experts need an input range (low, high) each, "
                f"got {input_ranges!r}"
            )
        scales = [None] * len(w) if scale is None else list(scale)
        parts = [
            self.prepare(we, r, name, high_plane, se)
            for we, r, se in zip(w, ranges, scales, strict=True)
        ]
        return Prepared(
            np.concatenate([p.weights for p in parts]),
            np.concatenate([p.scale for p in parts]),
            np.array([p.qinv for p in parts], np.float32),
            np.array([p.qzero for p in parts], np.float32),
        )

    def check_accumulator(self, q: np.ndarray, name: str) -> None:
        """Refuse weights whose worst-case dot product would overflow the integer
        accumulator (int32 for int8, int64 for int16): sum |q| times the largest input
        offset, 2^bits - 1."""
        if not self.quantized:
            return
        # |q| <= qmax fits q's own dtype; the sums go to int64 without an int64 copy,
        # and a block of rows at a time (fc6's int8 rows are 38 MB).
        rows = max(1, (1 << 22) // max(1, q[0].size if len(q) else 1))
        peak = max(
            (
                int(np.abs(q[r : r + rows]).sum(axis=1, dtype=np.int64).max(initial=0))
                for r in range(0, len(q), rows)
            ),
            default=0,
        )
        worst = peak * (2**self.bits - 1)
        limit = self.accumulator_limit
        if worst > limit:
            raise ValueError(
                f"{name}: {self.name} weights could overflow the {self.accumulate} "
                f"accumulator (worst case {worst:.3g} > {limit:.3g}); run this layer at "
                f"another precision"
            )


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "fp32",
            np.float32,
            0,
            "float",
            None,
            byte_dot=False,
            grouped=True,
            fidelity=3,
            description="the reference",
        ),
        Precision(
            "fp16",
            np.float16,
            0,
            "float",
            None,
            byte_dot=False,
            grouped=True,
            fidelity=1,
            description="weights stored as half (vload_half), float arithmetic",
        ),
        Precision(
            "int16",
            np.int16,
            16,
            "int64",
            2**63 - 1,
            byte_dot=False,
            grouped=True,
            fidelity=2,
            planes=True,
            description="int16 weights (two byte planes) and inputs, exact int64 accumulation",
        ),
        Precision(
            "int8",
            np.int8,
            8,
            "int32",
            2**31 - 1,
            byte_dot=True,
            grouped=True,
            high_plane_of="int16",
            description="int8 weights and inputs, exact int32 accumulation",
        ),
        Precision(
            "int16g",
            np.int16,
            16,
            "int64",
            2**63 - 1,
            byte_dot=False,
            grouped=False,
            fidelity=2,  # int16's answers
            planes=True,
            packed=True,
            description="int16's integers; fully connected weights in groups of 16 at the "
            "width each needs (DPRed)",
        ),
        Precision(
            "int8g",
            np.int8,
            8,
            "int32",
            2**31 - 1,
            byte_dot=True,
            grouped=False,
            packed=True,
            description="int8's integers; fully connected weights in groups of 16 at the "
            "width each needs (DPRed)",
        ),
    )
}


FP32 = PRECISIONS["fp32"]  # every launcher's default


def get_precision(name: str) -> Precision:
    """The table row for `name`; a ValueError naming the supported ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown precision {name!r}; supported: {', '.join(PRECISIONS)}"
        ) from None


def check_precisions(names: Iterable[str]) -> list[str]:
    """Precision names checked against the table, in order, duplicates dropped: the one
    check of a list of precisions, wherever it comes from (flag, setting, request)."""
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError(f"no precision given; supported: {', '.join(PRECISIONS)}")
    unknown = [name for name in names if name not in PRECISIONS]
    if unknown:
        raise ValueError(
            f"unknown precision {', '.join(unknown)}; supported: {', '.join(PRECISIONS)}"
        )
    return names
