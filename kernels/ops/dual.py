"""Dual-module inference of a fully connected layer with ReLU (Liu et al., ICML 2020).

A little module estimates every pre-activation from a low-dimensional projection of
the input: z = P x + p (r x I, kernels/cl/little.cl), then estimate = A z + c (O x r)
inside the big layer's kernel, row by row (Linear.launch with `skip`, linear.cl's
SKIP). Outputs estimated below the layer's threshold are clearly negative, so ReLU
makes them 0 whatever their exact value: the big layer writes 0 there without reading
their weight rows, and computes the rest exactly. The big Linear is shared, not
copied: a network with and without the little module holds one set of big weights.

Small layers on a CPU (`fused`) run all of it in one launch (little.cl's
dual_linear): there a launch costs as much as the layer's arithmetic, so the
projection's own launch would eat what skipping saves.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from kernels.ops.launcher import Launcher
from kernels.ops.linear import Linear
from kernels.precision import Precision


def little_weights(w: np.ndarray, precision: Precision) -> tuple[np.ndarray, np.ndarray]:
    """[M][K] float -> (weights stored as the layer's own, per-row scale): the little
    module's P and A, read in float (a quantised one with its scale, input unquantised)."""
    if precision.quantized:
        return precision.quantize_weights(w)
    return precision.store(w), np.ones(len(w), np.float32)


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


# Fused (one launch) where the big layer has at most this many weights (an expert's,
# grouped): a fashion-moe expert's fc6 and fc7 (41 and 66 thousand) take 5-20 us, a
# launch 2-4 us of it. Larger layers stream their weights for longer than a launch
# takes, and the fused kernel's projection, repeated by every work-item, would cost
# more than it saves (fashion-alexnet's fc6, 786 thousand, ran slower fused). Each
# image takes two work-items, half the rows each: one per thread of a two-core CPU at
# batch 1; more would each cost more to start than their rows take (64 rows each
# measured no faster than 128).
FUSED_WEIGHTS = 1 << 18
FUSED_SIDE = 4096  # the fused kernel keeps a row index an output, a float an input


def _transposed(
    experts: int, project: tuple[np.ndarray, ...], estimate: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, ...]:
    """The fused kernel's layout (little.cl's dual_linear): P^T [E][I][R16] and A^T
    [E][R16][O16] with their scales and vectors, R and O padded with zeros to
    multiples of 16, so that 16 projections or 16 rows' estimates are one vector."""
    (pw, ps, shift), (aw, a_s, bias) = project, estimate
    r, i, o = len(ps) // experts, pw.shape[1], len(a_s) // experts
    r16, o16 = 16 * -(-r // 16), 16 * -(-o // 16)

    def padded(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, a.dtype)
        out[tuple(slice(0, n) for n in a.shape)] = a
        return out

    pt = padded(pw.reshape(experts, r, i).transpose(0, 2, 1), (experts, i, r16))
    at = padded(aw.reshape(experts, o, r).transpose(0, 2, 1), (experts, r16, o16))
    ps, shift, a_s, bias = (
        padded(v.reshape(experts, -1), (experts, n))
        for v, n in ((ps, r16), (shift, r16), (a_s, o16), (bias, o16))
    )
    return pt, ps, shift, at, a_s, bias


class DualLinear(Launcher):
    """`big` (a Linear with its ReLU) run with its little module: `project` [r][I] and
    `shift` [r], `weight` [O][r] and `bias` [O] (grouped experts: each with a leading
    expert axis), and each expert's threshold. `fused`: one launch (little.cl's
    dual_linear) or two; None: fused for small layers on a CPU (`FUSED_WEIGHTS`)."""

    def __init__(
        self,
        big: Linear,
        project: np.ndarray,
        shift: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        thresholds: np.ndarray,
        fused: bool | None = None,
    ) -> None:
        if not big.relu:
            raise ValueError("dual-module inference needs the layer's ReLU")
        if big.precision.packed:
            raise ValueError(
                f"dual-module inference reads plain rows; {big.precision.name} packs them: "
                f"use {big.precision.name.rstrip('g')}"
            )
        experts, rank = big.experts, project.shape[-2]
        shapes = (project.shape, shift.shape, weight.shape, bias.shape)
        lead = (experts,) if big.segments is not None else ()
        want = ((*lead, rank, big.i), (*lead, rank), (*lead, big.o, rank), (*lead, big.o))
        if shapes != want:
            raise ValueError(f"little module shapes {shapes} do not fit the layer's {want}")
        thresholds = np.asarray(thresholds, np.float32).reshape(-1)
        if len(thresholds) != experts:
            raise ValueError(f"{len(thresholds)} thresholds for {experts} experts")
        self.device = device = big.device
        self.big, self.rank = big, rank
        p = big.precision
        if fused is None:
            small = big.weight_count <= FUSED_WEIGHTS * big.experts
            fused = device.is_cpu and small and max(big.o, big.i) <= FUSED_SIDE
        # Fused: two work-items an image, each a multiple of 16 rows (16 estimates a step)
        self.fused_ro = 16 * -(-big.o // 32) if fused else 0
        p_w, p_scale = little_weights(project.reshape(-1, big.i), p)
        a_w, a_scale = little_weights(weight.reshape(-1, rank), p)
        shift, bias = (v.astype(np.float32).ravel() for v in (shift, bias))
        if fused:
            arrays = _transposed(experts, (p_w, p_scale, shift), (a_w, a_scale, bias))
        else:
            arrays = (p_w, p_scale, shift, a_w, a_scale, bias)
        arrays = (p.device_form(arrays[0]), *arrays[1:3], p.device_form(arrays[3]), *arrays[4:])
        self.project = [device.upload(a) for a in arrays[:3]]  # int16: as byte planes
        self.little = [device.upload(a) for a in (*arrays[3:], thresholds)]
        self.stats = device.upload(np.zeros(3, np.int32))
        self.little_bytes = sum(a.nbytes for a in arrays) + thresholds.nbytes
        self.weight_bytes = big.weight_bytes + self.little_bytes
        self.weight_count, self.bits_per_weight = big.weight_count, big.bits_per_weight
        defines = {**p.defines, "RANK": rank, "GROUPED": big.segments is not None}
        if fused:
            defines.update(FUSED_RO=self.fused_ro, FUSED_I=big.i)
            self.qparams = device.upload(big.qparams)  # the input quantised in the kernel
        name = "dual_linear" if fused else "little_project"
        self.kernel = device.kernel("little.cl", name, defines)
        self._z: dict[int, Any] = {}

    @property
    def out_shape(self) -> tuple[int]:
        return self.big.out_shape

    def scratch_bytes(self, n: int) -> int:
        return self.big.scratch_bytes(n)

    def projections(self, n: int) -> Any:
        """The device buffer of z [n][rank] for batch size n."""
        found = self._z.get(n)
        if found is None:
            found = self._z[n] = self.device.alloc(4 * n * self.rank)
        return found

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        big = self.big
        grouped = () if big.segments is None else (big.segments, np.int32(big.experts))
        if self.fused_ro:
            i32 = np.int32
            self.device.launch(
                self.kernel,
                (-(-big.o // self.fused_ro), n),
                self.device.each_alone(2),
                *(i32(n), i32(big.i), i32(big.o), x, big.w, big.b, big.scale, y),
                *(*self.project, *self.little, self.stats, self.qparams, *grouped),
            )
            return
        z = self.projections(n)
        with self.device.labelled("little"):
            self.device.launch(
                self.kernel,
                (self.rank, n),
                self.device.each_alone(2),
                np.int32(big.i),
                x,
                *self.project,
                z,
                *grouped,
            )
        big.launch(n, x, y, scratch, (z, *self.little, self.stats), self.rank)

    def take_stats(self) -> SkipStats:
        """The counts since the last call (waits for the queue), and starts them again."""
        row_reads, images, computed = (int(v) for v in self.device.read(self.stats, (3,), np.int32))
        self.device.write(self.stats, np.zeros(3, np.int32)).wait()
        big = self.big
        row_bytes = big.i * np.dtype(big.precision.weight_dtype).itemsize
        little = self.little_bytes // big.experts
        return SkipStats(images, row_reads, computed, big.o, row_bytes, row_bytes * big.o, little)
