"""Stride-1 convolution by Winograd's minimal filtering, F(m x m, r x r)
(kernels/cl/winograd.cl).

F(4x4, 3x3) does 4x fewer multiplies than direct convolution (F(2x2, 3x3) 2.25x),
F(4x4, 5x5) 6.25x; AlexNet's conv3-conv5 (3x3) are 55% of its convolution work and
conv2 (5x5) 34%, and 4x4 tiles cover conv3-conv5's 13x13 outputs in 16 tiles an image
(a whole GEMM panel at batch 1). The transforms come from Toom-Cook interpolation at
0, 1, -1, 1/2, -1/2 (and 2, -2 for F(4x4, 5x5)) and infinity; the extra rounding this
costs is bounded per layer and on whole networks by the kernel and network tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.blocking import LANES, ROW_BLOCK, choose_nv, pack_rows
from kernels.ops.launcher import Launcher, Tuned
from kernels.precision import FP32, Precision
from kernels.runtime import Device
from kernels.tuning import conv_shape

I32 = np.int32
POINTS = (0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0)
VL = 8  # 4x4 tiles per work-item of the transforms (winograd.cl: *_lanes)
TILE = 4  # output tile m: larger tiles save more multiplies but lose accuracy
# 5x5 filters run Winograd from this many input channels on: with fewer, the
# transforms cost more than the multiplies they save (docs/benchmark-log.md).
WINOGRAD_5X5_CHANNELS = 48


def transforms(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) for F(m, r): y = A^T [(G g) * (B^T d)] for a 1-D correlation.

    Toom-Cook multiplies a filter polynomial (r coefficients) by a signal polynomial
    (m coefficients) by evaluating both at alpha = m + r - 1 points (alpha - 1 finite
    ones and infinity) and interpolating the product; a correlation is the transpose
    of that linear map. So G and A^T evaluate, and B^T is the transposed inverse of
    the alpha-coefficient evaluation matrix.
    """
    alpha = m + r - 1

    def evaluation(degree: int) -> np.ndarray:
        """Rows: a polynomial with `degree` coefficients evaluated at each point; at
        infinity, its leading coefficient."""
        e = np.zeros((alpha, degree))
        for j, p in enumerate(POINTS[: alpha - 1]):
            e[j] = [p**k for k in range(degree)]
        e[alpha - 1, degree - 1] = 1.0
        return e

    return evaluation(m).T, evaluation(r), np.linalg.inv(evaluation(alpha)).T


def transform_weights(weight: np.ndarray, m: int = TILE) -> np.ndarray:
    """[M][C][r][r] -> U: [alpha^2][M][C], U = G g G^T per channel pair."""
    r = weight.shape[2]
    _, g, _ = transforms(m, r)
    u = np.einsum("ij,mcjk,lk->mcil", g, weight.astype(np.float64), g)
    mm, c, alpha = weight.shape[0], weight.shape[1], g.shape[0]
    return u.reshape(mm, c, alpha * alpha).transpose(2, 0, 1).astype(np.float32)


def _values(matrix: np.ndarray) -> str:
    return ",".join(f"{float(v)!r}f" for v in matrix.ravel())


class WinogradConv2d(Launcher, Tuned):
    """Same contract as Conv2d: [C][N][H][W] in, [M][N][OH][OW] out, bias + ReLU.

    Grouped (`segments` given): the E experts of a mixture in one set of launches.
    `weight` is then [E][M][C][r][r] and `bias` [E][M]; the images are sorted by
    expert, expert e owning images segments[e] to segments[e + 1] (an int32 device
    buffer of E + 1 offsets, filled on the device before each run), and each image is
    convolved with its expert's filters; images past segments[E] pad the batch and
    their outputs are not written.

    `params` (the tuner's candidate): the batched GEMM's panel width `nv`
    (kernels/tuning.py's "conv" space) instead of the device's tuning.
    """

    op = "conv"

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        weight: np.ndarray,
        bias: np.ndarray | None,
        padding: tuple[int, int] = (0, 0),
        relu: bool = False,
        tile: int = TILE,
        precision: Precision = FP32,
        segments: Any = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.device = device
        self.tuned_init(conv_shape(in_shape, weight.shape, (1, 1), padding, 1), params)
        self.segments = segments
        self.experts = weight.shape[0] if segments is not None else 1
        weight = weight.reshape(-1, *weight.shape[-3:])  # [E * M][C][r][r]
        self.c, self.h, self.w = in_shape
        self.m, _, r, _ = weight.shape
        self.m //= self.experts
        self.ph, self.pw = padding
        self.oh, self.ow = self.h + 2 * self.ph - r + 1, self.w + 2 * self.pw - r + 1
        self.tile = tile
        self.alpha = tile + r - 1
        self.th, self.tw = -(-self.oh // tile), -(-self.ow // tile)
        self.blocks = -(-self.m // ROW_BLOCK)
        if precision.quantized:  # the transforms would mix quantised integers
            raise ValueError(f"Winograd runs floating-point precisions only, not {precision.name}")
        # The filters as the precision stores them (fp16: rounded to half) are what
        # the transforms take, so half weights in memory or from a copy on disk
        # (experts/model/quantized.py) give the same layer.
        per_expert = precision.round_trip(weight).reshape(self.experts, self.m, *weight.shape[1:])
        packed = precision.store(
            np.stack(
                [np.stack([pack_rows(ue) for ue in transform_weights(w, tile)]) for w in per_expert]
            )
        )
        self.a_stride, self.a_expert = packed[0, 0].size, packed[0].size
        self.u = device.upload(packed)
        bias = (
            np.zeros(self.experts * self.m, np.float32)
            if bias is None
            else bias.astype(np.float32).ravel()
        )
        self.bias = device.upload(bias)
        self.zero_bias = device.upload(np.zeros(self.blocks * ROW_BLOCK, np.float32))
        self.ones = device.upload(np.ones(self.blocks * ROW_BLOCK, np.float32))
        self.weight_bytes = packed.nbytes + bias.nbytes
        self.weight_count, self.bits_per_weight = weight.size, 8 * packed.itemsize
        self.precision = precision
        at, _, bt = transforms(tile, r)
        self.defines = {
            "ALPHA": self.alpha,
            "MT": tile,
            "RELU": relu,
            "BT_VALUES": _values(bt),
            "AT_VALUES": _values(at),
            "GROUPED": segments is not None,
        }
        self._kernels: dict[int, dict[str, Any]] = {}
        # The transforms of 4x4 tiles: VL tiles a work-item, one a lane. The input's
        # ran 1.8-3.3x faster than one tile a work-item, which PoCL left scalar (16
        # lanes spilled registers); the output's 5-15% faster than PoCL's own
        # vectorising, and one build serves every batch size, so an image's outputs
        # do not change with the batch it is in. 2x2 tiles (9 an image on a 6 x 6
        # map, where lanes were slower): one work-item per row of tiles for the input.
        self.lanes = VL if tile == 4 else 0
        if self.lanes:
            self.defines["VL"] = self.lanes

    def kernels(self, nv: int) -> dict[str, Any]:
        """The kernels for tile panels of LANES * nv columns, built on first use."""
        found = self._kernels.get(nv)
        if found is None:
            d = self.device
            lanes = "_lanes" if self.lanes else ""
            found = {
                "input": d.kernel("winograd.cl", "winograd_input" + lanes, self.defines),
                "output": d.kernel("winograd.cl", "winograd_output" + lanes, self.defines),
                "gemm": d.kernel(
                    "gemm.cl",
                    "gemm_packed",
                    {
                        "NV": nv,
                        "RELU": 0,
                        "GROUPED": self.defines["GROUPED"],
                        **self.precision.defines,
                    },
                ),
            }
            self._kernels[nv] = found
        return found

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.m, self.oh, self.ow)

    def effective(self, n: int) -> dict[str, Any]:
        return {"algorithm": "winograd", "nv": self._sizes(n)["nv"]}

    def _sizes(self, n: int) -> dict[str, int]:
        """Tiles and panels of tiles; where V (alpha^2 matrices `v_es` apart) and the
        products M (`m_es` apart, from float `m_off`) lie in the scratch buffer.

        The strides are padded off multiples of 4 KiB: streams that far apart alias
        in the L1 cache, which made the transforms several times slower.
        """
        tiles = n * self.th * self.tw
        # Grouped: narrow panels, as a panel straddling experts is computed once per expert.
        nv, widest = self.tuned(n).get("nv", 0), self.device.widest_panel
        if not 0 < nv <= widest:
            nv = choose_nv(tiles, widest)
        if self.segments is not None:
            nv = 1
        panels = -(-tiles // (LANES * nv))
        e = self.alpha * self.alpha
        v_es = panels * self.c * LANES * nv + 16
        m_off = -(-e * v_es // tiles) * tiles  # M starts on a whole row of tiles
        m_es = self.m * tiles + 16
        return {
            "tiles": tiles,
            "nv": nv,
            "panels": panels,
            "v_es": v_es,
            "m_off": m_off,
            "m_es": m_es,
            "floats": m_off + e * m_es,
        }

    def scratch_bytes(self, n: int) -> int:
        return 4 * self._sizes(n)["floats"]

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        z = self._sizes(n)
        tiles, kern, d = z["tiles"], self.kernels(z["nv"]), self.device
        if self.lanes:
            grid, local = (-(-tiles // self.lanes), self.c), d.each_alone(2)
        else:
            grid, local = (n * self.th, self.c), d.work_group(self.th, self.c)
        d.launch(
            kern["input"],
            grid,
            local,
            x,
            scratch,
            I32(n),
            I32(self.h),
            I32(self.w),
            I32(self.ph),
            I32(self.pw),
            I32(self.th),
            I32(self.tw),
            I32(self.c),
            I32(tiles),
            I32(z["v_es"]),
            I32(LANES * z["nv"]),
        )
        # M goes after V in the scratch buffer, at row m_off / tiles of a
        # [rows][tiles] matrix: the GEMM's c_row0 places it.
        grouped = ()
        if self.segments is not None:
            grouped = (self.segments, I32(self.experts), I32(self.th * self.tw), I32(self.a_expert))
        d.launch(
            kern["gemm"],
            (self.blocks, z["panels"], self.alpha * self.alpha),
            d.each_alone(3),
            I32(self.m),
            I32(tiles),
            I32(self.c),
            self.u,
            scratch,
            self.zero_bias,
            self.ones,
            scratch,
            I32(tiles),
            I32(z["m_off"] // tiles),
            I32(self.a_stride),
            I32(z["v_es"]),
            I32(z["m_es"]),
            *grouped,
        )
        if self.lanes:
            grid, local = (-(-tiles // self.lanes), self.m), d.each_alone(2)
        else:  # PoCL's own local size (one compile per batch size) was the fastest
            grid, local = (tiles, self.m), None
        d.launch(
            kern["output"],
            grid,
            local,
            scratch,
            I32(z["m_off"]),
            self.bias,
            y,
            I32(self.m),
            I32(tiles),
            I32(n),
            I32(self.oh),
            I32(self.ow),
            I32(self.th),
            I32(self.tw),
            I32(z["m_es"]),
            *grouped[:2],
        )


def winograd_fits(shape: tuple[int, ...], stride: tuple[int, int], groups: int) -> bool:
    """Whether a layer of filters [M][C][r][r] runs faster as Winograd F(4x4, r x r)
    (see kernels/ops/conv_choice.py's `conv2d`)."""
    _, c, r, r2 = shape
    wide_enough = r == 3 or (r == 5 and c >= WINOGRAD_5X5_CHANNELS)
    return r == r2 and wide_enough and tuple(stride) == (1, 1) and groups == 1
