"""Fixtures for the whole suite: one OpenCL device for the session (building programs is
the slow part, and the device memoises them), a seeded generator, the tiny network's and
the tiny mixture's model.json (fresh copies per test), inputs of their shape, and the
read-only model repositories that servers and in-process apps in several folders share.

Narrower fixtures live beside their users: tests/experts/conftest.py (the tiny network
with weights), tests/service/conftest.py (a repository of one's own, to modify) and
tests/service/commands/conftest.py.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import TINY, TINY_MOE, make_repo


def pytest_configure(config) -> None:
    # The built-in kernel choices, whatever a tuning database on this machine (or
    # shipped for its device) says: tests assert which kernel path runs. The tuning
    # tests turn it on where they need it; MOE_TUNING=1 make test runs all tuned.
    os.environ.setdefault("MOE_TUNING", "0")


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


@pytest.fixture
def tiny_meta() -> dict[str, Any]:
    """The tiny network's model.json: conv, maxpool, flatten, linear on 3 x 16 x 16
    inputs, labels cat, dog and fish."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_moe_meta() -> dict[str, Any]:
    """The tiny mixture's model.json (tiny-moe): the same inputs and labels, 4 experts,
    top-2 by default."""
    return copy.deepcopy(TINY_MOE)


@pytest.fixture
def sample(rng) -> np.ndarray:
    """Twelve random inputs of the tiny models' shape (3 x 16 x 16)."""
    return rng.standard_normal((12, 3, 16, 16), np.float32)


@pytest.fixture(scope="session")
def shared_tiny_repo(tmp_path_factory) -> Path:
    """A repository holding tiny, shared by the session's tests: read it, never write."""
    return make_repo(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def shared_repo(tmp_path_factory) -> Path:
    """A repository holding tiny and tiny-moe, shared by the session's tests: read it,
    never write."""
    return make_repo(tmp_path_factory.mktemp("models"), mixture=True)
