"""Max/average pooling and adaptive average pooling (kernels/cl/pool.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.geometry import pool_out
from kernels.ops.launcher import Launcher
from kernels.ops.pad import ITEMS
from kernels.runtime import Device

I32 = np.int32


class FloatPool(Launcher):
    """What the float pools share: writing the flatten's order, and with it the
    quantised input of the fully connected layer after the flatten (pool.cl's
    QUANT_OUT), so that layer runs no quantising pass."""

    device: Device

    def _build(self, name: str, defines: dict[str, Any]) -> None:
        """The pool.cl kernel `name` with `defines`; its quantising forms when asked."""
        self.name, self.defines = name, defines
        self.kernel = self.device.kernel("pool.cl", name, defines)
        self._quantising: dict[tuple[int, bool], Any] = {}

    def _launch(
        self,
        grid: tuple[int, ...],
        local: Any,
        x: Any,
        y: Any,
        args: tuple,
        flat: bool,
        quantise: Any,
    ) -> None:
        """`quantise`: a quantised Linear (not grouped) reading the output, flat."""
        kernel, qargs = self.kernel, ()
        if quantise is not None:
            if not flat or quantise.segments is not None:
                raise ValueError("a pool quantises its flat output for one linear layer only")
            key = (quantise.precision.bits, quantise.dot4)
            kernel = self._quantising.get(key)
            if kernel is None:
                defines = {**self.defines, "QUANT_OUT": 1, "QBITS": key[0], "DOT4": key[1]}
                kernel = self._quantising[key] = self.device.kernel("pool.cl", self.name, defines)
            qargs = quantise.qargs
        self.device.launch(kernel, grid, local, x, y, *args, I32(flat), *qargs)


class Pool2d(FloatPool):
    """Pooling over planes: works on [C][N][H][W] and [N][C][H][W] alike."""

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        mode: str,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int] = (0, 0),
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        if mode not in ("max", "avg"):
            raise ValueError(f"pool mode must be max or avg, got {mode!r}")
        self.device = device
        self.c, self.h, self.w = in_shape
        self.kh, self.kw = kernel
        self.sh, self.sw = stride
        self.ph, self.pw = padding
        self.oh = pool_out(self.h, self.kh, self.sh, self.ph, ceil_mode)
        self.ow = pool_out(self.w, self.kw, self.sw, self.pw, ceil_mode)
        # The whole geometry compiled in (pool.cl): the loops unroll, several times
        # faster than with the sizes as arguments.
        geometry = {
            "H": self.h,
            "W": self.w,
            "OH": self.oh,
            "OW": self.ow,
            "KH": self.kh,
            "KW": self.kw,
            "SH": self.sh,
            "SW": self.sw,
            "PH": self.ph,
            "PW": self.pw,
        }
        inside = (
            (self.ph, self.pw) == (0, 0)
            and (self.oh - 1) * self.sh + self.kh <= self.h
            and (self.ow - 1) * self.sw + self.kw <= self.w
        )
        defines = {
            "MODE": int(mode == "avg"),
            "COUNT_PAD": count_include_pad,
            "INSIDE": inside,
            **geometry,
        }
        self._build("pool2d", defines)
        self.mode, self.geometry = mode, geometry
        self._bytes: dict[tuple[Any, bool], Any] = {}

    @property
    def takes_bytes(self) -> bool:
        """Whether it can pool the integer pipeline's bytes (`launch_bytes`)."""
        return self.mode == "max" and self.c % 8 == 0

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.c, self.oh, self.ow)

    def __call__(
        self, n: int, x: Any, y: Any, scratch: Any = None, flat: bool = False, quantise: Any = None
    ) -> None:
        """`flat`: write [N][C*OH*OW], the flatten's order, instead of [C][N][OH][OW];
        `quantise`: as the quantised input of that Linear (`FloatPool`)."""
        grid, local = (self.oh, self.c * n), self.device.work_group(self.oh, self.c)
        self._launch(grid, local, x, y, (I32(n),), flat, quantise)

    def launch_bytes(
        self, n: int, x: Any, y: Any, padding: tuple[int, int] | None, pad: tuple[Any, ...]
    ) -> None:
        """Max pooling in the integer pipeline (pool.cl's pool2d_bytes): x holds a DOT4
        convolution's output bytes [N][H][W][C]; y gets the next layer's input as its
        `input_bytes` say: a convolution's [N][OH][OW][C], padded by `padding` with the
        byte `pad` (one value, or grouped experts' device table with the segment table
        and their count), or (`padding` None) a fully connected layer's [N][C*OH*OW]."""
        flat, grouped = padding is None, len(pad) > 1
        kernel = self._bytes.get((padding, grouped))
        if kernel is None:
            oph, opw = (0, 0) if flat else padding
            defines = {**self.geometry, "C": self.c, "BYTES": 1, "OPH": oph, "OPW": opw}
            defines.update(FLAT=flat, GROUPED=grouped)
            kernel = self.device.kernel("pool.cl", "pool2d_bytes", defines)
            self._bytes[(padding, grouped)] = kernel
        rows = n * (self.oh + (0 if flat else 2 * padding[0]))
        each = max(1, rows // ITEMS)
        self.device.launch(
            kernel, (-(-rows // each),), self.device.each_alone(1), x, y, I32(n), I32(each), *pad
        )


class AdaptiveAvgPool2d(FloatPool):
    def __init__(
        self, device: Device, in_shape: tuple[int, int, int], output_size: tuple[int, int]
    ) -> None:
        self.device = device
        self.c, self.h, self.w = in_shape
        self.oh, self.ow = output_size
        self._build("adaptive_avgpool2d", {})

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.c, self.oh, self.ow)

    def __call__(
        self, n: int, x: Any, y: Any, scratch: Any = None, flat: bool = False, quantise: Any = None
    ) -> None:
        """`flat`: write [N][C*OH*OW], the flatten's order, instead of [C][N][OH][OW];
        `quantise`: as the quantised input of that Linear (`FloatPool`)."""
        grid, local = (self.oh, self.c * n), self.device.work_group(self.oh, self.c)
        geometry = (I32(self.h), I32(self.w), I32(self.oh), I32(self.ow), I32(n))
        self._launch(grid, local, x, y, geometry, flat, quantise)
