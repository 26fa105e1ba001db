"""Fixtures for the tests of experts/: the tiny network with its weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from experts.model.architectures import random_weights


@pytest.fixture
def tiny_model(tiny_meta) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The tiny network's model.json and its seeded random weights (as in the tiny
    repositories: seed 1)."""
    return tiny_meta, random_weights(tiny_meta, seed=1)
