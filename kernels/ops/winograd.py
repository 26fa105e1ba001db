"""3x3 stride-1 convolution by Winograd F(2x2, 3x3) (kernels/cl/winograd.cl).

2.25x fewer multiplies than direct convolution; AlexNet's conv3-conv5 (55% of its
convolution work) are this shape. The error stays at float32 rounding level: the
transforms only add and subtract (and halve, in the weight transform).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.ops.conv import Conv2d, choose_nv, pack_rows
from kernels.runtime import Device

I32 = np.int32
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)


def transform_weights(weight: np.ndarray) -> np.ndarray:
    """[M][C][3][3] -> U: [16][M][C], U = G g G^T per channel pair."""
    u = np.einsum("ij,mcjk,lk->mcil", G, weight.astype(np.float64), G)
    m, c = weight.shape[:2]
    return u.reshape(m, c, 16).transpose(2, 0, 1).astype(np.float32)


class WinogradConv2d:
    """Same contract as Conv2d: [C][N][H][W] in, [M][N][OH][OW] out, bias + ReLU."""

    def __init__(
        self,
        device: Device,
        in_shape: tuple[int, int, int],
        weight: np.ndarray,
        bias: np.ndarray | None,
        padding: tuple[int, int] = (1, 1),
        relu: bool = False,
    ) -> None:
        self.device = device
        self.c, self.h, self.w = in_shape
        self.m = weight.shape[0]
        self.ph, self.pw = padding
        self.oh, self.ow = self.h + 2 * self.ph - 2, self.w + 2 * self.pw - 2
        self.th, self.tw = -(-self.oh // 2), -(-self.ow // 2)
        self.blocks = -(-self.m // 8)
        u = transform_weights(weight)
        packed = np.stack([pack_rows(u[e]) for e in range(16)])
        self.a_stride = packed[0].size
        self.u = device.upload(packed)
        bias = np.zeros(self.m, np.float32) if bias is None else bias.astype(np.float32)
        self.bias = device.upload(bias)
        self.zero_bias = device.upload(np.zeros(self.blocks * 8, np.float32))
        self.weight_bytes = packed.nbytes + bias.nbytes
        self.relu = relu
        self._kernels: dict[int, dict[str, Any]] = {}

    def kernels(self, nv: int) -> dict[str, Any]:
        """The kernels for tile panels of 16 * nv columns, built on first use."""
        found = self._kernels.get(nv)
        if found is None:
            d, defines = self.device, {"NB": 16 * nv, "RELU": self.relu}
            found = {"input": d.kernel("winograd.cl", "winograd_input", defines),
                     "output": d.kernel("winograd.cl", "winograd_output", defines),
                     "gemm": d.kernel("gemm.cl", "gemm_packed", {"NV": nv, "RELU": 0})}  # fmt: skip
            self._kernels[nv] = found
        return found

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.m, self.oh, self.ow)

    def _sizes(self, n: int) -> dict[str, int]:
        """Tiles and panels of tiles; where V (16 matrices `v_es` apart) and the 16
        products M (`m_es` apart, from float `m_off`) lie in the scratch buffer.

        The strides are padded off multiples of 4 KiB: 16 streams that far apart
        alias in the L1 cache, which made the transforms several times slower.
        """
        tiles = n * self.th * self.tw
        nb = 16 * choose_nv(tiles)
        panels = -(-tiles // nb)
        v_es = panels * self.c * nb + 16
        m_off = -(-16 * v_es // tiles) * tiles  # M starts on a whole row of tiles
        m_es = self.m * tiles + 16
        return {"tiles": tiles, "nv": nb // 16, "panels": panels, "v_es": v_es, "m_off": m_off,
                "m_es": m_es, "floats": m_off + 16 * m_es}  # fmt: skip

    def scratch_bytes(self, n: int) -> int:
        return 4 * self._sizes(n)["floats"]

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        z = self._sizes(n)
        tiles, panels, kern = z["tiles"], z["panels"], self.kernels(z["nv"])
        d = self.device
        d.launch(
            kern["input"], (n * self.th, self.c), None, x, scratch,
            I32(n), I32(self.h), I32(self.w), I32(self.ph), I32(self.pw),
            I32(self.th), I32(self.tw), I32(self.c), I32(tiles), I32(z["v_es"]),
        )  # fmt: skip
        # M goes after V in the scratch buffer, at row m_off / tiles of a
        # [rows][tiles] matrix: the GEMM's c_row0 places it.
        d.launch(
            kern["gemm"], (self.blocks, panels, 16), (1, 1, 1),
            I32(self.m), I32(tiles), I32(self.c), self.u, scratch, self.zero_bias,
            scratch, I32(tiles), I32(z["m_off"] // tiles),
            I32(self.a_stride), I32(z["v_es"]), I32(z["m_es"]),
        )  # fmt: skip
        d.launch(
            kern["output"], (tiles, self.m), None, scratch, I32(z["m_off"]), self.bias, y,
            I32(self.m), I32(tiles), I32(n), I32(self.oh), I32(self.ow),
            I32(self.th), I32(self.tw), I32(z["m_es"]),
        )  # fmt: skip


def conv2d(
    device: Device,
    in_shape: tuple[int, int, int],
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    groups: int = 1,
    relu: bool = False,
) -> Conv2d | WinogradConv2d:
    """The fastest convolution launcher for a layer: Winograd for 3x3 stride-1
    ungrouped layers (measured 1.3-2x faster on AlexNet's conv3-5), else Conv2d."""
    if weight.shape[2:] == (3, 3) and tuple(stride) == (1, 1) and groups == 1:
        return WinogradConv2d(device, in_shape, weight, bias, padding, relu)
    return Conv2d(device, in_shape, weight, bias, stride, padding, groups, relu)
