"""2-D convolution as a GEMM over im2col columns (kernels/cl/gemm.cl, im2col.cl)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyopencl as cl

from kernels import blocking
from kernels.blocking import LANES, PANEL_SPEED, ROW_BLOCK, choose_nv
from kernels.geometry import conv_out
from kernels.ops.conv_bytes import ByteLink
from kernels.ops.conv_direct import direct_conv
from kernels.ops.conv_lanes import choose_lanes, lanes_conv, lanes_kernel
from kernels.ops.im2col import im2col_conv
from kernels.ops.launcher import Launcher, Tuned, quantize_args
from kernels.ops.pad import ConvPad
from kernels.ops.store import PlaneStore, upload_weights
from kernels.precision import FP32, Precision
from kernels.runtime import Device
from kernels.tuning import conv_shape

I32 = np.int32
# Largest K = channels * KH * KW that runs as a direct convolution by default (stride 1,
# CPUs): above it, gathering GEMM panels pays for itself (docs/benchmark-log.md; 1 x 1 filters,
# with nothing to gather, and int16, with its long accumulators, run the GEMM).
DIRECT_MAX_K = 144
SPREAD = 2  # the implicit GEMM's work-items per compute unit at small batch, untuned


class Conv2d(Launcher, Tuned, ByteLink):
    """Convolution on [C][N][H][W] activations, bias and ReLU fused in the GEMM.

    Where a B panel (K x NB floats) fits the device's local memory (CPUs), one
    implicit-GEMM kernel gathers its panel from the zero-padded input: no im2col matrix
    goes through memory (it cost as much as the GEMM at batch 8). Else im2col + GEMM.

    `dot4` (int8, the implicit GEMM or the direct kernel; default: where `device.dot4`,
    but not for a direct layer read from a store): the products run on AVX-512 VNNI's
    byte dot products instead of in float lanes (gemm.cl's DOT4); same sums. The
    direct kernel then takes four taps of a filter row a step (pad2d_direct). `lanes`
    (DOT4's implicit GEMM turned around, kernels/ops/conv_lanes.py; default: where
    `lanes_fit`): output channels in the lanes, the input's bytes broadcast, no panels.

    `direct` (default on CPUs: stride 1, filters wider than 1 x 1, K <= DIRECT_MAX_K,
    not int16): gemm.cl's conv_direct reads its taps straight from the padded input,
    no GEMM panels (a network's first layer: K = 25 for one grey channel, 5 x 5).
    Also the default for int8 on VNNI with a stride of 4 along rows (`rows4`, AlexNet's
    conv1: 1.4-1.5x the implicit GEMM with its pad at batch 8 and 1): an int of the
    padded input row then holds four taps of one output pixel, so nothing is gathered.

    `segments` (a mixture's grouped experts, quantised: the float ones run Winograd):
    `weight` [E][M][C][KH][KW], `bias` [E][M], `input_range` one per expert; the
    images, sorted by expert, are split by the `segments` device buffer (E + 1
    offsets), each quantised with its expert's input parameters and convolved with its
    expert's filters, as the implicit GEMM (gemm.cl's GROUPED); images past
    segments[E] pad the batch and their outputs are not written.

    `weight_scale` (one per output channel): `weight` holds the precision's integers
    already (a quantised copy on disk, experts/model/quantized.py). `params` (the
    tuner's candidate): `nv` and `spread` (tuning.py's space), not the device's tuning.
    """

    op = "conv"

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        groups: int = 1,
        relu: bool = False,
        implicit: bool | None = None,
        precision: Precision = FP32,
        input_range: tuple[float, float] | None = None,
        dot4: bool | None = None,
        direct: bool | None = None,
        store: PlaneStore | None = None,
        key: str = "",
        segments: Any = None,
        weight_scale: np.ndarray | None = None,
        params: dict[str, Any] | None = None,
        lanes: bool | None = None,
    ) -> None:
        self.device = device
        self.segments = segments
        self.experts = experts = weight.shape[0] if segments is not None else 1
        if segments is not None:
            if groups != 1:
                raise ValueError("grouped experts need convolutions without groups")
            direct, implicit = False, True  # the implicit GEMM alone has a grouped form
        self.tuned_init(conv_shape(in_shape, weight.shape, stride, padding, groups), params)
        weight = weight.reshape(-1, *weight.shape[-3:])  # grouped: [E * M][C][KH][KW]
        self.c, self.h, self.w = in_shape
        self.m, self.cg, self.kh, self.kw = weight.shape
        self.m //= experts
        self.sh, self.sw = stride
        self.ph, self.pw = padding
        self.groups = groups
        self.oh = conv_out(self.h, self.kh, self.sh, self.ph)
        self.ow = conv_out(self.w, self.kw, self.sw, self.pw)
        self.k = self.cg * self.kh * self.kw
        self.mg = self.m // groups
        self.blocks = -(-self.mg // ROW_BLOCK)
        # The implicit GEMM's K x LANES*NV float panel: the widest NV local memory holds.
        local_bytes = device.cl_device.local_mem_size
        fits = [nv for nv in PANEL_SPEED if self._panel_bytes(nv) <= local_bytes]
        self.widest_nv = min(max(fits, default=0), device.widest_panel)
        stride1 = (self.sh, self.sw) == (1, 1)
        shared = store is not None and store.serves(precision)
        # int8 on VNNI reads the input rows of a layer with a stride of 4 along them as
        # ints, four taps of a filter row each, without gathering (AlexNet's conv1).
        rows4 = (
            self.sw == 4 and precision.byte_dot and device.dot4 and not shared and dot4 is not False
        )
        # The defaults: the direct kernel for small K (not int16, with its long
        # accumulators) and for rows4, else the implicit GEMM where the widest panel fits.
        direct_fits = device.is_cpu and stride1 and 1 < self.kh * self.kw and self.k <= DIRECT_MAX_K
        implicit_fits = device.is_cpu and self.widest_nv == max(PANEL_SPEED)
        if direct is None:  # asking for a path (implicit, dot4) rules the default out
            direct = (
                implicit is None
                and dot4 is None
                and (direct_fits or rows4)
                and not precision.wide_accumulator
            )
        elif direct and not (stride1 or rows4):
            raise ValueError("direct convolution needs stride 1 (int8 on VNNI: or 4 along rows)")
        self.direct = direct
        self.rows4 = direct and rows4 and not stride1
        if implicit is None:
            implicit = implicit_fits
        elif implicit and not self.widest_nv:
            raise ValueError(
                f"implicit convolution needs {self._panel_bytes(1)} bytes of local memory for one "
                f"panel of K={self.k}; the device has {local_bytes}"
            )
        self.implicit = implicit and not direct
        # A store (int16 and int8 of one model): int8 reads int16's high plane. Where
        # int8 runs DOT4 by default the planes take DOT4's layout, which int8 reads as its
        # own and the float lanes (int16) pick bytes from (gemm.cl's TAPS); elsewhere the
        # float-lane GEMM's, which int8's direct kernel reads too. The defaults decide,
        # so the int16 and int8 launchers of a layer agree.
        default_dot4 = segments is not None or (implicit_fits and not direct_fits)
        self.taps = shared and device.dot4 and default_dot4
        byte_dot = (self.implicit or self.direct) and precision.byte_dot
        if dot4 and not (byte_dot and device.dot4):
            raise ValueError(
                "dot4 needs an implicit or direct int8 convolution on a device with VNNI"
            )
        # A store's direct int8 layer reads int16's float-lane layout: no DOT4.
        default = device.dot4 and not (self.direct and shared)
        self.dot4 = byte_dot and (default if dot4 is None else dot4)
        if shared and (self.dot4 if not self.taps else not self.implicit):
            held = "DOT4's layout" if self.taps else "the float-lane GEMM's layout"
            raise ValueError(f"{key}: a weight store holds this layer in {held}, not this path's")
        eligible = self.implicit and self.dot4 and not shared and segments is None
        self.lanes = choose_lanes(self, lanes, eligible)
        rows = experts * self.m
        bias = np.zeros(rows, np.float32) if bias is None else bias.astype(np.float32).ravel()
        # `weight_scale` (one per output channel): the weights are integers already.
        wg = weight.reshape(groups, experts * self.mg, self.k)
        sg = [None] * groups
        if weight_scale is None:
            wg = wg.astype(np.float32)
        else:
            sg = list(np.asarray(weight_scale, np.float32).reshape(groups, -1))
        self.precision = precision
        # Quantised: one input range for the layer (grouped: per expert), scales per
        # output channel.
        high_plane = shared and bool(precision.high_plane_of)
        if segments is not None:
            stacked = wg[0].reshape(experts, self.m, self.k)
            scale = None if sg[0] is None else sg[0].reshape(experts, self.m)
            prepared = [precision.prepare_experts(stacked, input_range, "conv", high_plane, scale)]
        else:
            prepared = [
                precision.prepare(wg[g], input_range, "conv", high_plane, sg[g])
                for g in range(groups)
            ]
        self.qargs = quantize_args(device, prepared[0], segments)
        self.qzero = np.atleast_1d(prepared[0].qzero)  # per expert (the padding bytes)
        self.cg4 = -(-self.cg // 4) * 4
        # DOT4's layout groups four k of a row into an int (int8 on VNNI, and a store
        # that holds a layer for it: its low plane, int16's alone, in tap order).
        # Grouped experts' rows are laid out expert by expert.
        dot4_layout = self.taps or (self.dot4 and not shared)
        by_four = blocking.lane_rows if self.lanes else blocking.dot4_rows  # (conv_lanes)
        layout = partial(by_four, cg=self.cg, cg4=self.cg4) if dot4_layout else blocking.pack_rows
        self.kj = self.kw  # the direct kernel's steps along a filter row
        if self.direct and self.dot4:  # four taps of a row to an int
            self.kj = -(-self.kw // 4)
            layout = partial(blocking.window_rows, cg=self.cg, kh=self.kh, kw=self.kw)
        # rows4: a padded input row in ints, reaching the last window's last step
        wp = self.w + 2 * self.pw
        self.row_ints = -(-(wp + 4 * self.kj - self.kw) // 4) if self.rows4 else 0
        low = partial(blocking.tap_rows, cg=self.cg, cg4=self.cg4) if self.taps else None
        if experts > 1:
            layout, low = (blocking.per_expert(f, experts) if f else None for f in (layout, low))
        sources = [(store, f"{key}/{g}", wg[g], sg[g]) if shared else None for g in range(groups)]
        held = [
            upload_weights(device, precision, p.weights, layout, source, low)
            for p, source in zip(prepared, sources, strict=True)
        ]
        self.a = [buffer for buffer, _ in held]
        uploaded = sum(n for _, n in held)  # as resident: rows padded to blocks
        self.scale = [device.upload(p.scale) for p in prepared]
        self.bias = [device.upload(part) for part in np.split(bias, groups)]
        if self.dot4:
            self.corr = [device.upload(p.byte_offset_correction()) for p in prepared]
        self.weight_bytes = uploaded + sum(p.scale.nbytes for p in prepared) + 4 * rows
        self.high_plane = high_plane
        self.weight_count, self.bits_per_weight = weight.size, 8 * prepared[0].weights.itemsize
        self.relu = relu
        self.defines = {
            **precision.defines,
            "DOT4": self.dot4,
            "TAPS": self.taps and not self.dot4,
            "GROUPED": segments is not None,
        }
        # The input zero-padded, and for quantised precisions quantised (DOT4: into
        # bytes, channels innermost): kernels/ops/pad.py.
        padded = direct or (self.implicit and (self.ph or self.pw or precision.quantized))
        self.pad = (
            ConvPad(
                device,
                in_shape,
                padding,
                self.defines,
                self.qargs,
                self.cg,
                self.cg4,
                direct,
                self.row_ints,
            )
            if padded
            else None
        )
        self._kernels: dict[tuple[int, Any], dict[str, Any]] = {}

    def effective(self, n: int) -> dict[str, Any]:
        """The parameters this layer runs with at batch n (tuned or built-in)."""
        if self.lanes:
            return {"algorithm": "lanes"}
        kind = "direct" if self.direct else "implicit" if self.implicit else "im2col"
        out = {"algorithm": kind, "nv": self.panel_nv(n)}
        if self.implicit:
            out["spread"] = self.tuned(n).get("spread", SPREAD)
        return out

    def panel_nv(self, n: int) -> int:
        """The panel width at batch n: the tuned one where it fits, else the one that
        pads the path's columns least (choose_nv; the direct kernel's run along a row)."""
        widest = self.widest_nv if self.implicit else self.device.widest_panel
        nv = self.tuned(n).get("nv", 0)
        cols = self.ow if self.direct else n * self.oh * self.ow
        return nv if 0 < nv <= widest else choose_nv(cols, widest)

    def _panel_bytes(self, nv: int) -> int:
        """Local memory for one float panel of K x LANES * nv columns."""
        return 4 * self.k * LANES * nv

    def kernels(self, nv: int, out_pad: tuple[int, int] | None = None) -> dict[str, Any]:
        """The kernels for panels of LANES * nv columns, built on first use; `out_pad`:
        the implicit GEMM writing the next layer's bytes, padded so (`requantizer`)."""
        found = self._kernels.get((nv, out_pad))
        if found is None:
            d, nb = self.device, {"NB": LANES * nv}
            defines = {"NV": nv, "RELU": self.relu, **self.defines}
            if out_pad is not None:
                defines.update(BYTES_OUT=1, OPH=out_pad[0], OPW=out_pad[1])
            if self.lanes:
                found = {"lanes": lanes_kernel(self, out_pad)}
            elif self.direct:
                found = {"direct": d.kernel("gemm.cl", "conv_direct", defines)}
            elif self.implicit:
                found = {"conv": d.kernel("gemm.cl", "conv_packed", defines)}
            else:
                nb = {**nb, **self.precision.defines}
                found = {
                    "gemm": d.kernel("gemm.cl", "gemm_packed", defines),
                    "im2col": d.kernel("im2col.cl", "im2col_packed", nb),
                    "tail": d.kernel("im2col.cl", "im2col_tail", nb),
                }
            self._kernels[(nv, out_pad)] = found
        return found

    @property
    def reads_nchw(self) -> bool:
        """Whether `launch` can take a network's images as they come, [N][C][H][W]
        (the direct DOT4 kernel's pad pass reads either layout)."""
        return self.direct and self.pad is not None and self.pad.reads_nchw

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.m, self.oh, self.ow)

    def scratch_bytes(self, n: int) -> int:
        if self.direct:  # the padded input, and the slack conv_direct reads past its end
            return self.pad.nbytes(n) + 4 * (LANES * self.panel_nv(n) + self.kj)
        if self.implicit:
            return self.pad.nbytes(n) if self.pad is not None else 0
        cols = n * self.oh * self.ow
        nb = LANES * self.panel_nv(n)
        return -(-cols // nb) * self.k * nb * 4

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        self.launch(n, x, y, scratch)

    def launch(
        self,
        n: int,
        x: Any,
        y: Any,
        scratch: Any,
        requant: tuple[Any, ...] = (),
        quantised_input: bool = False,
        nchw: bool = False,
    ) -> None:
        """`requant` (`requantizer`): write the next convolution's input bytes instead of
        floats; `quantised_input`: x holds this layer's padded input bytes already
        (written by the layer before, so no pad pass); `nchw`: x is [N][C][H][W], a
        network's input as it comes (`reads_nchw`)."""
        if (requant or quantised_input) and not self.dot4:
            raise ValueError("the integer pipeline of convolutions needs DOT4")
        if quantised_input and not self.implicit:
            raise ValueError("only the implicit GEMM reads the bytes the layer before wrote")
        if nchw and not self.reads_nchw:
            raise ValueError("this convolution reads [C][N][H][W] input only")
        if self.direct:
            direct_conv(self, n, x, y, scratch, requant, nchw)
        elif self.implicit:
            self._implicit(n, x, y, scratch, requant, quantised_input)
        else:
            im2col_conv(self, n, x, y, scratch)

    def _implicit(
        self, n: int, x: Any, y: Any, scratch: Any, requant: tuple[Any, ...], quantised: bool
    ) -> None:
        hp, wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        if self.pad is not None and not quantised:
            self.pad(n, x, scratch)
            x = scratch
        if self.lanes:
            return lanes_conv(self, n, x, y, requant)
        cols = n * self.oh * self.ow
        nv = self.panel_nv(n)
        panels = -(-cols // (LANES * nv))
        # Few panels (small batch, small images): split the row blocks too, `spread`
        # items a core; each part gathers its own panel, so more costs more than it evens.
        items = self.tuned(n).get("spread", SPREAD) * self.device.info.compute_units
        parts = min(self.blocks, -(-items // panels))
        per_item = -(-self.blocks // parts)
        parts = -(-self.blocks // per_item)
        # DOT4 and TAPS: K over (i, j, channel) with the channels padded (DOT4's input
        # too, one byte each).
        k = self.kh * self.kw * self.cg4 if self.dot4 or self.taps else self.k
        c0 = self.cg4 if self.dot4 else self.cg
        local = cl.LocalMemory((1 if self.dot4 else 4) * k * LANES * nv)
        conv = self.kernels(nv, requant[0] if requant else None)["conv"]
        grouped = () if self.segments is None else (self.segments, I32(self.experts))
        # Bytes out: C is the consumer's pixels, ldc their channels (all groups').
        ldc, qout = (self.m, requant[1:]) if requant else (cols, ())
        for g in range(self.groups):
            dot4 = (self.corr[g], I32(self.groups * self.cg4), *qout) if self.dot4 else ()
            self.device.launch(
                conv,
                (panels, parts),
                (1, 1),
                I32(self.mg),
                I32(cols),
                I32(k),
                self.a[g],
                x,
                self.bias[g],
                self.scale[g],
                y,
                I32(ldc),
                I32(g * self.mg),
                I32(n),
                I32(hp),
                I32(wp),
                I32(g * c0),
                I32(self.kh),
                I32(self.kw),
                I32(self.sh),
                I32(self.sw),
                I32(self.oh),
                I32(self.ow),
                I32(per_item),
                I32(self.cg),
                local,
                *dot4,
                *grouped,
            )
