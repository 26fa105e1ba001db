"""Shared fixtures: one OpenCL device for the whole session (building programs is
the slow part, and the device memoises them)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def device():
    from kernels.devices import DeviceError
    from kernels.runtime import Device

    try:
        return Device()
    except DeviceError as exc:
        pytest.skip(f"no OpenCL device: {exc}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """Normalised mean squared error, the per-op error measure (as in ggml's tests)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.mean((got - want) ** 2) / max(np.mean(want**2), 1e-30))
