"""Helpers for the kernel tests (not a test module): the error measure, running a 4-D op
through the device's CNHW layout, the quantised kernels' tolerance, the device skips and
the grouped experts' segment table."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.precision import PRECISIONS

FP32_NMSE = 1e-10  # float32 with a different summation order

QUANTIZED = [n for n, p in PRECISIONS.items() if p.quantized]
UNPACKED = sorted(n for n, p in PRECISIONS.items() if not p.packed)  # rows as they are


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """Normalised mean squared error, the per-op error measure (as in ggml's tests)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.mean((got - want) ** 2) / max(np.mean(want**2), 1e-30))


def to_cnhw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3))


def run4d(device, op, x: np.ndarray, scratch_bytes: int = 0) -> np.ndarray:
    """Run a 4-D op on NCHW `x` through the device's CNHW layout; NCHW back."""
    n = x.shape[0]
    c, oh, ow = op.out_shape
    y = device.alloc(4 * n * c * oh * ow)
    scratch = device.alloc(scratch_bytes) if scratch_bytes else None
    op(n, device.upload(to_cnhw(x)), y, scratch)
    return device.read(y, (c, n, oh, ow)).transpose(1, 0, 2, 3)


def assert_dequantized_close(got: np.ndarray, want: np.ndarray, scale_of: np.ndarray) -> None:
    """Quantised kernels sum exactly in integers; only the float epilogue (acc * scale +
    bias, which the device may fuse into one fma) may differ: by an ulp or two of the
    larger term. `scale_of` is that term's magnitude, elementwise. An integer sum off
    by one would miss by a whole scale step, far more than that."""
    tol = 2 * np.spacing(np.abs(scale_of).astype(np.float32))
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs differ beyond an ulp"


def skip_unless_dot4(device, dot4: bool) -> None:
    if dot4 and not device.dot4:
        pytest.skip("this device has no AVX-512 VNNI byte dot products (Device.dot4)")


def skip_unless_panel_fits(device, k: int) -> None:
    """The implicit GEMM needs a K x 16 float panel in local memory (GPUs: 48-64 KiB)."""
    have = device.cl_device.local_mem_size
    if 64 * k > have:
        pytest.skip(f"the device's {have} bytes of local memory hold no implicit panel of K={k}")


def segment_table(device, counts: list[int]):
    """The device table of expert row offsets, and each row's expert."""
    seg = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return device.upload(seg), np.repeat(np.arange(len(counts)), counts)
