"""Dual-module inference of a fully connected layer with ReLU (Liu et al., ICML 2020).

A little module estimates every pre-activation from a low-dimensional projection of
the input: z = P x + p (r x I, kernels/cl/little.cl), then estimate = A z + c (O x r)
inside the big layer's kernel, row by row (Linear.launch with `skip`, linear.cl's
SKIP). Outputs estimated below the layer's threshold are clearly negative, so ReLU
makes them 0 whatever their exact value: the big layer writes 0 there without reading
their weight rows, and computes the rest exactly. The big Linear is shared, not
copied: a network with and without the little module holds one set of big weights.

On a CPU (`form`, chosen by the layer's size) the rows run in little.cl's
dual_linear, which decides all its rows first and then computes the ones wanted from
a list, four at a time; small layers project inside it too, all in one launch, and
two such layers in a row share one launch (`DualLinear.follows`).
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


# The CPU forms (little.cl's dual_linear) for layers of at most FUSED_SIDE inputs and
# outputs (it keeps a float an input and a row index for half the outputs in private
# memory, 96 KiB at most); "fused" (projecting inside, one launch) where the layer has
# at most FUSED_WEIGHTS weights (an expert's, grouped). A fashion-moe expert's fc6 and
# fc7 (41 and 66 thousand) take 5-20 us, a launch 2-4 us of it; in larger layers the
# projection, repeated by every work-item of an image, would cost more than its launch.
# Each image takes two work-items, half the rows each: one per thread of a two-core
# CPU at batch 1 (one, four or eight measured no faster on the experts).
FUSED_WEIGHTS = 1 << 18
FUSED_SIDE = 16384
FORMS = ("skip", "listed", "fused")  # linear.cl's SKIP, dual_linear after little_project, alone


def _transposed(w: np.ndarray, vectors: tuple[np.ndarray, ...], experts: int) -> list[np.ndarray]:
    """dual_linear's layout: w [E * M][K] as [E][K][M16] and each per-row vector [E * M]
    as [E][M16], M padded with zeros to a multiple of 16 (16 rows one vector)."""
    m, k = len(w) // experts, w.shape[1]
    m16 = 16 * -(-m // 16)
    wt = np.zeros((experts, k, m16), w.dtype)
    wt[:, :, :m] = w.reshape(experts, m, k).transpose(0, 2, 1)
    out = [wt]
    for v in vectors:
        padded = np.zeros((experts, m16), v.dtype)
        padded[:, :m] = v.reshape(experts, m)
        out.append(padded)
    return out


class DualLinear(Launcher):
    """`big` (a Linear with its ReLU) run with its little module: `project` [r][I] and
    `shift` [r], `weight` [O][r] and `bias` [O] (grouped experts: each with a leading
    expert axis), and each expert's threshold. `form` (`FORMS`); None: by the layer's
    size and the device (`FUSED_WEIGHTS`, `FUSED_SIDE`)."""

    def __init__(
        self,
        big: Linear,
        project: np.ndarray,
        shift: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        thresholds: np.ndarray,
        form: str | None = None,
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
        if form is None:
            small = big.weight_count <= FUSED_WEIGHTS * big.experts
            cpu = device.is_cpu and max(big.o, big.i) <= FUSED_SIDE
            form = "skip" if not cpu else "fused" if small else "listed"
        if form not in FORMS:
            raise ValueError(f"dual-module form {form!r}: one of {', '.join(FORMS)}")
        self.form = form
        p_w, p_scale = little_weights(project.reshape(-1, big.i), p)
        a_w, a_scale = little_weights(weight.reshape(-1, rank), p)
        shift, bias = (v.astype(np.float32).ravel() for v in (shift, bias))
        projection = [p_w, p_scale, shift]
        if form == "fused":
            projection = _transposed(p_w, (p_scale, shift), experts)
        estimate = [a_w, a_scale, bias]
        if form != "skip":
            estimate = _transposed(a_w, (a_scale, bias), experts)
        projection[0], estimate[0] = p.device_form(projection[0]), p.device_form(estimate[0])
        self.project = [device.upload(a) for a in projection]  # int16: as byte planes
        self.little = [device.upload(a) for a in (*estimate, thresholds)]
        self.stats = device.upload(np.zeros(3, np.int32))
        arrays = (*projection, *estimate, thresholds)
        self.little_bytes = sum(a.nbytes for a in arrays)
        self.weight_bytes = big.weight_bytes + self.little_bytes
        self.weight_count, self.bits_per_weight = big.weight_count, big.bits_per_weight
        defines = {**p.defines, "RANK": rank, "GROUPED": big.segments is not None}
        self.defines = {**defines, "DOT4": big.dot4}
        self.leader: DualLinear | None = None  # `follows`: run with the layer before
        self.paired = False  # run by the layer after (`follows`)
        if form != "fused":
            self.kernel = device.kernel("little.cl", "little_project", defines)
        self.rows = 16 * -(-big.o // 32)  # dual_linear's per work-item: two an image
        if form != "skip":
            self.qparams = device.upload(big.qparams)  # the input quantised in the kernel
            more = {"ROWS": self.rows, "IN": big.i, "PROJECTED": form == "listed"}
            self.dual = device.kernel("little.cl", "dual_linear", {**self.defines, **more})
        self._z: dict[int, Any] = {}
        self._h: dict[int, Any] = {}

    def follows(self, first: DualLinear) -> bool:
        """Run `first`, the layer whose output this one takes, in this layer's launch
        (little.cl's dual_pair, one work-item an image) where both are fused alike: at
        fashion-moe's expert sizes the launch between them cost what either layer's
        arithmetic does. Returns whether they were paired."""
        a, b = first.big, self.big
        alike = a.precision is b.precision and a.segments is b.segments and a.dot4 == b.dot4
        free = first.leader is None  # else `first` runs inside its own pair, not alone
        if not (first.form == self.form == "fused" and a.o == b.i and alike and free):
            return False
        rows = {"ROWS": 16 * -(-a.o // 16), "ROWS2": 16 * -(-b.o // 16), "PAIR": True}
        shapes = {"IN": a.i, "RANK2": self.rank, "IN2": b.i, "PROJECTED": False}
        defines = {**first.defines, **shapes, **rows}
        self.pair = self.device.kernel("little.cl", "dual_pair", defines)
        self.leader, first.paired = first, True
        return True

    def runs_at(self, n: int) -> bool:
        return not self.paired  # the layer after runs it

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

    def _corr(self) -> tuple[Any, ...]:
        return (self.big.corr,) if self.big.dot4 else ()

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        big, i32 = self.big, np.int32
        grouped = () if big.segments is None else (big.segments, i32(big.experts))
        if self.leader is not None:
            first, a = self.leader, self.leader.big
            h = self._h.get(n)
            if h is None:
                h = self._h[n] = self.device.alloc(4 * n * a.o)
            self.device.launch(
                self.pair,
                (1, n),
                self.device.each_alone(2),
                *(i32(n), i32(a.i), i32(a.o), i32(big.o), x, a.w, a.b, a.scale, h),
                *(*first.project, *first.little, first.stats, first.qparams, *first._corr()),
                *(big.w, big.b, big.scale, y, *self.project, *self.little, self.stats),
                *(self.qparams, *self._corr(), *grouped),
            )
            return
        little: tuple[Any, ...] = tuple(self.project)
        if self.form != "fused":
            z = little = (self.projections(n),)
            with self.device.labelled("little"):
                self.device.launch(
                    self.kernel,
                    (self.rank, n),
                    self.device.each_alone(2),
                    *(i32(big.i), x, *self.project, *z, *grouped),
                )
        if self.form == "skip":
            big.launch(n, x, y, scratch, (*z, *self.little, self.stats), self.rank)
            return
        self.device.launch(
            self.dual,
            (-(-big.o // self.rows), n),
            self.device.each_alone(2),
            *(i32(n), i32(big.i), i32(big.o), x, big.w, big.b, big.scale, y, *little),
            *(*self.little, self.stats, self.qparams, *self._corr(), *grouped),
        )

    def take_stats(self) -> SkipStats:
        """The counts since the last call (waits for the queue), and starts them again."""
        row_reads, images, computed = (int(v) for v in self.device.read(self.stats, (3,), np.int32))
        self.device.write(self.stats, np.zeros(3, np.int32)).wait()
        big = self.big
        row_bytes = big.i * np.dtype(big.precision.weight_dtype).itemsize
        little = self.little_bytes // big.experts
        return SkipStats(images, row_reads, computed, big.o, row_bytes, row_bytes * big.o, little)
