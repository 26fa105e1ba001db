"""Probe kernels for instructions a device may lack: each builds a kernel that uses the
instruction the way the real kernels do and checks one dot product against numpy, so a
path is taken only where the driver compiles it and it computes right."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl

# One vpdpbusd (16 int lanes, each += four unsigned x signed byte products), called
# as gemm.cl's DOT4 calls it: from a function compiled for the feature.
VNNI = """
__attribute__((target("avx512vnni")))
int16 dot4(int16 u, int16 s) { return __builtin_ia32_vpdpbusd512((int16)(0), u, s); }
__kernel void probe(__global const int16 *u, __global const int16 *s, __global int16 *out)
{ out[0] = dot4(u[0], s[0]); }
"""

# PTX's dp4a as tiled.cl's dot4 calls it (unsigned bytes of u, signed of s), one per
# work-item: NVIDIA's OpenCL compiler takes inline PTX, which no extension string says.
DP4A = """
__kernel void probe(__global const int *u, __global const int *s, __global int *out)
{
    const int i = get_global_id(0);
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(u[i]), "r"(s[i]), "r"(0));
    out[i] = d;
}
"""


def _dot_products(device: Any, source: str, lanes: int, global_size: int) -> bool:
    """Build `source`'s probe and run it on 64 unsigned and 64 signed bytes: whether it
    builds, runs and gives each int lane the sum of its four byte products."""
    u = np.arange(64, dtype=np.uint8) * 4  # 0 .. 252
    s = (np.arange(64) % 7 - 3).astype(np.int8)
    want = (u.astype(np.int32) * s).reshape(lanes, 4).sum(axis=1)
    try:
        out = device.alloc(4 * lanes)
        kernel = cl.Program(device.context, source).build().probe
        kernel(device.queue, (global_size,), None, device.upload(u), device.upload(s), out)
        got = device.read(out, (lanes,), np.int32)
    except cl.Error:
        return False
    return bool(np.array_equal(got, want))


def vnni_works(device: Any) -> bool:
    """Whether AVX-512 VNNI's vpdpbusd builds and computes right on `device` (PoCL)."""
    return _dot_products(device, VNNI, 16, 1)


def dp4a_works(device: Any) -> bool:
    """Whether PTX's dp4a builds and computes right on `device` (NVIDIA's OpenCL)."""
    return _dot_products(device, DP4A, 16, 16)
