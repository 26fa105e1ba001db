"""The tiled GEMM family (kernels/cl/tiled.cl): both operands staged in local memory,
a register block per work-item, every tile size a tuning parameter. The form GPUs
need (the register-blocked CPU kernels leave a GPU's local memory unused); on PoCL's
CPU device it runs, tested, and the tuner finds it slower. Floating-point precisions
and int8, whose steps add four byte products into int sums (dp4a on NVIDIA)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.geometry import conv_out
from kernels.ops.launcher import Launcher, Tuned
from kernels.precision import FP32, Precision, Prepared
from kernels.runtime import Device
from kernels.tuning import conv_shape

I32 = np.int32

# The tile an untuned tiled launch takes: 64 x 64 per work-group of 16 x 16, a 4 x 4
# register block per work-item, K tiles of 16, scalar loads, no unrolling, local rows
# padded by one word.
DEFAULT_TILE = {
    "mwg": 64,
    "nwg": 64,
    "kwg": 16,
    "mdimc": 16,
    "ndimc": 16,
    "vwm": 1,
    "vwn": 1,
    "kwi": 1,
    "padl": 1,
}


class TiledGemm:
    """tiled.cl's kernel for one device, built per tile (its `-D` defines) and
    checked against the device's limits before it is built."""

    def __init__(self, device: Device, precision: Precision, conv: bool, relu: bool) -> None:
        if precision.quantized and not byte_rows(precision):
            raise ValueError(
                f"the tiled GEMM runs floating-point precisions and int8, not {precision.name}"
            )
        self.device, self.conv = device, conv
        self.int8 = precision.quantized
        self.defines = {**precision.defines, "CONV": conv, "RELU": relu}
        if self.int8:
            self.defines["DP4A_PTX"] = device.dp4a
        self._kernels: dict[tuple[int, ...], Any] = {}

    def tile(self, params: dict[str, Any]) -> dict[str, int]:
        """The tile `params` ask for (DEFAULT_TILE where they are silent), or a
        ValueError where it cannot run on this device."""
        t = {k: int(params.get(k, v)) for k, v in DEFAULT_TILE.items()}
        if t["mwg"] % t["mdimc"] or t["nwg"] % t["ndimc"]:
            raise ValueError(f"tile {t}: mwg must be a multiple of mdimc, nwg of ndimc")
        if any(t["kwg"] % t[v] for v in ("vwm", "vwn", "kwi")):
            raise ValueError(f"tile {t}: vwm, vwn and kwi must divide kwg")
        if (self.conv or self.int8) and t["vwn"] != 1:
            raise ValueError(f"tile {t}: convolutions and int8 quantise B as they stage it (vwn 1)")
        d = self.device.cl_device
        if t["mdimc"] * t["ndimc"] > d.max_work_group_size:
            raise ValueError(
                f"tile {t}: work-group larger than the device's {d.max_work_group_size}"
            )
        local = 4 * t["kwg"] * (t["mwg"] + t["nwg"] + 2 * t["padl"])
        if local > d.local_mem_size:
            raise ValueError(
                f"tile {t}: {local} bytes of local memory, the device has {d.local_mem_size}"
            )
        return t

    def __call__(self, params: dict[str, Any], m: int, p: int, k: int, *args: Any) -> None:
        """C[m][p] = A[m][k] B[k][p]: `args` are tiled.cl's from A on (int8: its
        QUANT_ARGS last, `int8_args`)."""
        t = self.tile(params)
        key = tuple(t.values())
        kernel = self._kernels.get(key)
        if kernel is None:
            defines = {k.upper(): v for k, v in t.items()}
            kernel = self.device.kernel("tiled.cl", "tiled", {**defines, **self.defines})
            self._kernels[key] = kernel
        groups = (-(-m // t["mwg"]) * t["mdimc"], -(-p // t["nwg"]) * t["ndimc"])
        self.device.launch(kernel, groups, (t["mdimc"], t["ndimc"]), I32(m), I32(p), I32(k), *args)


def byte_rows(precision: Precision) -> bool:
    """Whether the tiled GEMM's int8 form takes `precision`'s weights: one signed byte
    each (int8's, and int8g's plain integers), read four at a time as ints."""
    return precision.quantized and precision.bits == 8


def int8_rows(q: np.ndarray) -> np.ndarray:
    """[M][K] int8 rows -> [M][ceil(K / 4)] ints of four weights each (little-endian:
    the first k lowest, as tiled.cl's dot4 pairs them), zero weights padding the row."""
    m, k = q.shape
    padded = np.zeros((m, -(-k // 4) * 4), np.int8)
    padded[:, :k] = q
    return padded.view(np.int32)


def int8_args(device: Device, prepared: Prepared) -> tuple[Any, ...]:
    """tiled.cl's QUANT_ARGS, the int8 form's last arguments: each row's scale and its
    correction for inputs held as bytes q + 128, and the input's qinv and qzero."""
    return (
        device.upload(prepared.scale),
        device.upload(prepared.byte_offset_correction()),
        np.float32(prepared.qinv),
        np.float32(prepared.qzero),
    )


class TiledConv2d(Launcher, Tuned):
    """Convolution as the tiled implicit GEMM, on [C][N][H][W] activations, bias and
    ReLU fused; ungrouped, floating-point precisions and int8 (which needs the
    calibrated `input_range`; `weight_scale`: `weight` holds its integers already).
    `params`: the tile (the tuner's candidate) instead of the device's tuning."""

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
        precision: Precision = FP32,
        params: dict[str, Any] | None = None,
        input_range: tuple[float, float] | None = None,
        weight_scale: np.ndarray | None = None,
    ) -> None:
        if groups != 1:
            raise ValueError("the tiled convolution takes ungrouped layers")
        self.device, self.precision = device, precision
        self.gemm = TiledGemm(device, precision, conv=True, relu=relu)
        self.c, self.h, self.w = in_shape
        self.m, _, self.kh, self.kw = weight.shape
        self.k = int(np.prod(weight.shape[1:]))
        self.stride, self.padding = stride, padding
        self.oh = conv_out(self.h, self.kh, stride[0], padding[0])
        self.ow = conv_out(self.w, self.kw, stride[1], padding[1])
        prepared = precision.prepare(
            weight.reshape(self.m, -1), input_range, "conv", scale=weight_scale
        )
        if self.gemm.int8:
            rows = int8_rows(prepared.weights)
            self.quant = int8_args(device, prepared)
        else:
            rows, self.quant = precision.store(prepared.weights), ()
        self.a = device.upload(rows)
        bias = np.zeros(self.m, np.float32) if bias is None else bias.astype(np.float32)
        self.bias = device.upload(bias)
        quant_bytes = sum(b.size for b in self.quant[:2])  # int8: scales and corrections
        self.weight_bytes = rows.nbytes + bias.nbytes + quant_bytes
        self.weight_count = weight.size
        self.bits_per_weight = 8 * prepared.weights.itemsize
        self.tuned_init(conv_shape(in_shape, weight.shape, stride, padding, groups), params)
        self.gemm.tile(self.tuned(1))  # a tile this device cannot run fails at build time

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.m, self.oh, self.ow)

    def effective(self, n: int) -> dict[str, Any]:
        return {"algorithm": "tiled", **self.gemm.tile(self.tuned(n))}

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        cols = n * self.oh * self.ow
        (sh, sw), (ph, pw) = self.stride, self.padding
        geometry = (n, self.h, self.w, self.kh, self.kw, sh, sw, ph, pw, self.oh, self.ow)
        self.gemm(
            self.tuned(n),
            self.m,
            cols,
            self.k,
            self.a,
            x,
            self.bias,
            y,
            I32(cols),
            I32(1),
            *(I32(v) for v in geometry),
            *self.quant,
        )


def linear_args(o: int) -> tuple[Any, ...]:
    """The trailing arguments of a fully connected layer's tiled launch: output [N][O]
    (ldm 1, ldp O), no convolution geometry."""
    return (I32(1), I32(o), *(I32(0),) * 11)
