"""Fully connected layer, weights stored out x in (kernels/cl/linear.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import bitgroups
from kernels.ops.launcher import Launcher, Tuned, quantize_args
from kernels.ops.store import PlaneStore, upload_weights
from kernels.ops.tiled import TiledGemm, byte_rows, linear_args
from kernels.precision import FP32, Precision, Prepared
from kernels.requant import requant_params
from kernels.runtime import Device

I32 = np.int32


SPLIT_ITEMS = 64  # work-items sharing one output row in linear_split (two NVIDIA warps)
# VNNI rows: past X_IN_L1 bytes of X per work-item (half a 32 KB L1 data cache), k runs
# in blocks of KB_BLOCK bytes over KB_ROWS rows (linear_dot4.h: three at a time; fc6 at
# batch 8: 1.3x in blocks, then 1.1x in threes; docs/benchmark-log.md).
X_IN_L1 = 16384
KB_BLOCK = 512
KB_ROWS = 6


def choose_packing(
    q: np.ndarray, precision: Precision, pack: bool | None
) -> bitgroups.Packed | None:
    """A packed precision's (int8g, int16g) weights `q` in groups (kernels/bitgroups.py)
    where that makes them smaller (`pack` None), always (True) or never (False); the
    plain rows otherwise, which hold the same integers."""
    if not precision.packed:
        if pack:
            raise ValueError(f"{precision.name} weights are not packed: use int8g or int16g")
        return None
    if pack is False:
        return None
    packed = bitgroups.encode(q, precision.bits)
    return packed if pack or packed.nbytes < q.nbytes else None


def prepare_packed(
    precision: Precision,
    packed: bitgroups.Packed,
    scale: np.ndarray | None,
    input_range: tuple[float, float] | None,
    name: str = "linear",
) -> Prepared:
    """`Precision.prepare` for rows packed already (a quantised copy on disk, with its
    rows' `scale`): no integers at hand, so the accumulator is bounded by each group's
    width (16 weights of at most 2^(w-1) each)."""
    p, (m, _) = precision, packed.shape
    if not p.packed or packed.bits != p.bits or scale is None:
        raise ValueError(f"{name}: packed {packed.bits}-bit rows are not {p.name}'s")
    if np.shape(scale) != (m,) or input_range is None:
        raise ValueError(f"{name}: {p.name} needs a scale a row and the input's range")
    peak = (16 << (packed.widths.astype(np.int64) - 1)).sum(axis=1).max(initial=0)
    if int(peak) * (2**p.bits - 1) > int(p.accumulator_limit or 0):
        raise ValueError(f"{name}: {p.name} weights could overflow the accumulator")
    s, zero = p.activation_params(*input_range)
    rows = np.empty((m, 0), p.weight_dtype)  # the integers stay packed
    return Prepared(
        rows, np.asarray(scale, np.float32) * np.float32(s), np.float32(1 / s), np.float32(zero)
    )


class Linear(Launcher, Tuned):
    """y[N][O] = x[N][I] W^T + b, ReLU optional.

    Memory-bound at small batch. On CPUs (`linear`) each work-item reads RO weight rows
    once per tile of RB images: RO=4 streamed fc6 fastest on PoCL (docs/benchmark-log.md), and
    RB=8 covers the usual serving batch in one pass over the weights.
    Elsewhere (`linear_split`, `split`) a work-group of SPLIT_ITEMS shares each row, so
    a GPU has enough work-items in flight to stream at its own bandwidth.

    `dot4` (int8 on CPUs, rows a multiple of four bytes; default: where `device.dot4`):
    the products run on AVX-512 VNNI (linear.cl's DOT4), same sums.

    `store` (kernels/ops/store.py): int16 and int8 share the weights held under `key`.
    Packed precisions (int8g, int16g: kernels/bitgroups.py) run `linear_packed`, one
    row per work-item, on any device, where packing makes the weights smaller (`pack`
    None; True: always, False: never).

    `weight_scale` (one per row): `weight` holds the precision's integers already, or
    is a `bitgroups.Packed` (a quantised copy on disk, experts/model/quantized.py).

    `params` (the tuner's candidate): the kernel form and tile (kernels/tuning.py's
    "linear" space) instead of the device's tuning for the batch; `split` and the
    defaults above are what an untuned layer runs.
    """

    op = "linear"

    def __init__(
        self,
        device: Device,
        weight: np.ndarray | bitgroups.Packed,
        bias: np.ndarray | None,
        relu: bool = False,
        precision: Precision = FP32,
        input_range: tuple[float, float] | None = None,
        segments: Any = None,
        split: bool | None = None,
        dot4: bool | None = None,
        store: PlaneStore | None = None,
        key: str = "",
        pack: bool | None = None,
        weight_scale: np.ndarray | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.device = device
        self.split = not device.is_cpu if split is None else split
        self.segments = segments  # grouped: weight [E][O][I], rows sorted by expert
        self.experts = experts = weight.shape[0] if segments is not None else 1
        if segments is not None and not precision.grouped:
            raise ValueError(f"grouped experts cannot run {precision.name}")
        self.o, self.i = weight.shape[-2:]
        # Packed already (a quantised copy on disk, with its rows' scales): the device
        # form as it comes.
        given = weight if isinstance(weight, bitgroups.Packed) else None
        scale = None if weight_scale is None else np.asarray(weight_scale, np.float32).ravel()
        if given is None:
            stacked = weight.reshape(experts, self.o, self.i)
            weight = weight.reshape(experts * self.o, self.i)
        self.relu = relu
        bias = (
            np.zeros(experts * self.o, np.float32)
            if bias is None
            else bias.astype(np.float32).ravel()
        )
        # A store (int16 and int8 of one model): int8 reads int16's high plane.
        shared = store is not None and store.serves(precision) and not precision.packed
        high_plane = shared and bool(precision.high_plane_of)
        if given is not None:
            prepared = prepare_packed(precision, given, scale, input_range, key or "linear")
        elif segments is not None:  # each expert's own input range
            scales = None if scale is None else scale.reshape(experts, self.o)
            prepared = precision.prepare_experts(stacked, input_range, "linear", high_plane, scales)
        else:
            prepared = precision.prepare(weight, input_range, "linear", high_plane, scale)
        self.qargs = quantize_args(device, prepared, segments)
        # For the integer pipeline (`requantizer`): the rows' scales and biases, and the
        # input's quantisation parameters.
        self.row_scale, self.row_bias, self.qparams = prepared.scale, bias, prepared.qparams()
        self._requants: dict[int, tuple[Any, ...]] = {}
        self.packed = packed = given or choose_packing(prepared.weights, precision, pack)
        if packed is not None:  # linear.cl's linear_packed decodes them
            self.w = device.upload(packed.stream)
            self.offsets = device.upload(packed.offsets.astype(np.uint32))
            self.nibbles = device.upload(packed.nibbles())
            uploaded = packed.nbytes
            self.split = False
        else:
            held = (store, key, weight, scale) if shared else None
            self.w, uploaded = upload_weights(device, precision, prepared.weights, shared=held)
        self.scale = device.upload(prepared.scale)
        self.b = device.upload(bias)
        self.weight_bytes = uploaded + prepared.scale.nbytes + bias.nbytes
        self.weight_count = experts * self.o * self.i
        if packed is None:
            self.bits_per_weight, self.weight_args = 8 * prepared.weights.itemsize, (self.w,)
        else:
            self.bits_per_weight = packed.bits_per_weight
            self.weight_args = (self.w, self.offsets, self.nibbles)
        self.high_plane = high_plane
        self.precision = precision
        # Rows a packed precision left plain hold int8's integers: VNNI reads them too.
        byte_dot = precision.byte_dot and not self.split and self.i % 4 == 0 and packed is None
        if dot4 and not (byte_dot and device.dot4):
            raise ValueError("dot4 needs int8 rows of 4n bytes, unsplit, on a device with VNNI")
        self.dot4 = byte_dot and (device.dot4 if dot4 is None else dot4)
        self.defines = {**precision.defines, "DOT4": self.dot4, "GROUPED": segments is not None}
        if precision.quantized:
            self.quantize = device.kernel("linear.cl", "quantize_input", self.defines)
        # by (split, RO, RB, LS, KB, little module's rank, REQUANT form)
        self._kernels: dict[tuple[Any, ...], Any] = {}
        # The tiled GEMM (GPUs at large batch): float rows, or int8 rows read as ints
        # (whole fours of bytes; not a store's planes), which quantises as it stages x.
        int8 = byte_rows(precision) and self.i % 4 == 0 and not high_plane
        plain = (int8 or not precision.quantized) and packed is None and segments is None
        self.tiled = TiledGemm(device, precision, conv=False, relu=relu) if plain else None
        if self.dot4 or (plain and int8):  # inputs as bytes q + 128
            self.corr = device.upload(prepared.byte_offset_correction())
        self.tuned_init(f"{self.o}x{self.i}" + ("" if segments is None else f"/e{experts}"), params)

    @property
    def out_shape(self) -> tuple[int]:
        return (self.o,)

    def effective(self, n: int) -> dict[str, Any]:
        """The parameters this layer runs with at batch n (tuned or built-in)."""
        form, ro, rb, ls, kb = self._tile(n)
        if form == "tiled":
            return {"form": form, **self.tiled.tile(self.tuned(n))}
        shape = {"ls": ls} if form == "split" else {"ro": ro, **({"kb": kb} if self.dot4 else {})}
        return {"form": form, "rb": rb, **shape}

    def _tile(
        self, n: int, requant: bool = False, skip: bool = False
    ) -> tuple[str, int, int, int, int]:
        """(form, RO, RB, LS, KB): "rows" (linear), "split" (linear_split) or "tiled"
        (tiled.cl), rows and images per work-item (per work-group when split),
        work-items per work-group when split, bytes of k per block (VNNI rows; 0: no
        blocks). `requant`, `skip`: the launch is on the integer pipeline (writes the
        next layer's quantised input, or reads its own from the layer before), or runs
        a little module."""
        form, ro, rb, ls = self._shape(n, requant, skip)
        t = self.tuned(n)
        if not self.dot4:
            if t.get("kb") and self.params is not None:  # the tuner's candidate: refused
                raise ValueError("k blocks (kb) are for int8 rows on VNNI only")
            return form, ro, rb, ls, 0
        # The RB rows of X outgrow L1: k in blocks, over more rows per work-item, so
        # that each block of X is read from L1 by every pass (linear_dot4.h, KB).
        big = rb * self.i > X_IN_L1
        kb = t.get("kb", KB_BLOCK if big else 0)
        if self.segments is None:  # RO * RB int16 sums and RB inputs in 32 registers
            ro = t.get("ro", KB_ROWS if kb else 2)
        return form, ro, rb, ls, kb

    def _shape(self, n: int, requant: bool, skip: bool) -> tuple[str, int, int, int]:
        """(form, RO, RB, LS) of `_tile`, which sets RO for ungrouped VNNI rows."""
        t = self.tuned(n)
        asked = form = t.get("form", "split" if self.split else "rows")
        if self.packed is not None or self.dot4 or requant:
            form = "rows"  # the only form of packed rows, VNNI and the integer pipeline
        if form == "tiled" and (skip or self.tiled is None):
            form = "split" if self.split else "rows"
        if form != asked and self.params is not None:  # the tuner's candidate: refused
            raise ValueError(f"this {self.shape} layer runs {form}, not {asked}")
        ls = t.get("ls", SPLIT_ITEMS)
        rb = min(n, t.get("rb", 8))
        if self.packed is not None:  # one row per work-item, decoded once per RB images
            return form, 1, rb, ls
        # Grouped: one image at a time, as neighbouring rows may be other experts'.
        if self.segments is not None:
            return form, 1 if form == "split" else t.get("ro", 4), 1, ls
        if form == "split":  # an int16 lane is a long16: 32 registers per image
            return form, 1, 1 if self.precision.wide_accumulator else min(n, t.get("rb", 4)), ls
        return form, t.get("ro", 4), rb, ls

    def _tiled(self, n: int, x: Any, y: Any) -> None:
        """y [n][O] = x [n][I] W^T + b as the tiled GEMM (M = O rows, P = n images)."""
        quant = (self.scale, self.corr, *self.qargs) if self.tiled.int8 else ()
        args = (self.w, x, self.b, y, *linear_args(self.o), *quant)
        self.tiled(self.tuned(n), self.o, n, self.i, *args)

    def scratch_bytes(self, n: int) -> int:
        """Quantised: the input's quantised copy (DOT4: bytes)."""
        if not self.precision.quantized:
            return 0
        return n * self.i * (1 if self.dot4 else 4)

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        self.launch(n, x, y, scratch)

    def feeds(self, consumer: Launcher) -> bool:
        """Whether this layer can write `consumer`'s quantised input itself (the integer
        pipeline, kernels/requant.py): int8 rows (packed or not) into int8 rows, on the
        CPU forms, grouped alike."""
        return (
            type(consumer) is Linear
            and self.precision.bits == consumer.precision.bits == 8
            and not self.split
            and self.segments is consumer.segments
            and consumer.i == self.o
        )

    @property
    def input_bytes(self) -> tuple[None, tuple[()]]:
        """This layer's input as the integer pipeline writes it after a convolution (a
        max pool of its bytes, Pool2d.launch_bytes): unpadded, in the flatten's order."""
        return None, ()

    def requantizer(self, consumer: Linear) -> tuple[Any, ...]:
        """(form, device buffers) of the epilogue that writes `consumer`'s input: form 1
        bytes q + 128 (a consumer on VNNI), 2 floats q - zero; made once per consumer."""
        found = self._requants.get(id(consumer))
        if found is None:
            qinv, zero = consumer.qparams[:, 0].astype(np.float64), consumer.qparams[:, 1]
            r = requant_params(self.row_scale, self.row_bias, 1.0 / qinv, zero)
            buffers = tuple(self.device.upload(a) for a in (r.mult, r.shift, r.bias_acc, r.zero))
            found = self._requants[id(consumer)] = (1 if consumer.dot4 else 2, *buffers)
        return found

    def launch(
        self,
        n: int,
        x: Any,
        y: Any,
        scratch: Any = None,
        skip: tuple[Any, ...] = (),
        rank: int = 0,
        requant: tuple[Any, ...] = (),
        quantised_input: bool = False,
    ) -> None:
        """`skip` (dual-module inference, kernels/ops/dual.py; needs the fused ReLU): the
        device buffers of the little module's projections z [n][rank], its A [O][rank]
        (stored as this layer's weights), A's row scales and biases, each expert's
        threshold and the int[3] statistics the kernel adds to (linear.cl, SKIP).
        `requant` (`requantizer`): write the next layer's quantised input instead of
        floats; `quantised_input`: x is this layer's quantised input already (written
        by the layer before, so no quantising pass)."""
        if skip and not self.relu:
            raise ValueError("skipping rows needs the layer's ReLU")
        if skip and requant:
            raise ValueError("a layer with a little module writes floats")
        kind, ro, rb, ls, kb = self._tile(n, bool(requant) or quantised_input, bool(skip))
        if kind == "tiled":
            self._tiled(n, x, y)
            return
        split = kind == "split"
        form = requant[0] if requant else 0
        kernel = self._kernels.get((split, ro, rb, ls, kb, rank, form))
        if kernel is None and self.packed is not None:
            defines = {"PACKED": 1, "RB": rb, "RELU": self.relu, "REQUANT": form, **self.defines}
            kernel = self.device.kernel("linear.cl", "linear_packed", defines)
            self._kernels[(split, ro, rb, ls, kb, rank, form)] = kernel
        elif kernel is None:
            shape = {"LS": ls} if split else {"RO": ro, "KB": kb}
            defines = {
                **shape,
                "RB": rb,
                "RELU": self.relu,
                "SKIP": bool(skip),
                "RANK": rank,
                "REQUANT": form,
                **self.defines,
            }
            name = "linear_split" if split else "linear"
            kernel = self.device.kernel("linear.cl", name, defines)
            self._kernels[(split, ro, rb, ls, kb, rank, form)] = kernel
        if self.precision.quantized and not quantised_input:
            count = n * self.i
            self.device.launch(
                self.quantize,
                (count,),
                self.device.work_group(self.i),
                x,
                scratch,
                I32(count),
                I32(self.i),
                *self.qargs,
            )
            x = scratch
        rows, tiles = -(-self.o // ro), -(-n // rb)
        if split:
            grid, local = (rows * ls, tiles), (ls, 1)
        else:
            grid, local = (rows, tiles), self.device.each_alone(2)
        self.device.launch(
            kernel,
            grid,
            local,
            I32(n),
            I32(self.i),
            I32(self.o),
            x,
            *self.weight_args,
            self.b,
            self.scale,
            y,
            *((self.corr,) if self.dot4 else ()),
            *(() if self.segments is None else (self.segments, I32(self.experts))),
            *skip,
            *requant[1:],
        )
