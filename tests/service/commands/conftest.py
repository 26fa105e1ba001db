"""Fixtures for the command tests: the tiny repository as MOE_MODEL_REPOSITORY (the
test's own), the same with the small mixture added, a photo on disk, and a synthetic
Fashion-MNIST test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experts.model.architectures import random_weights
from experts.model.repository import Repository
from tests.helpers import SMALL, write_split


@pytest.fixture
def repo(tiny_repo: Path, monkeypatch) -> Path:
    """The test's own tiny repository as MOE_MODEL_REPOSITORY, and no other MOE_* server
    setting from the environment."""
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(tiny_repo))
    for name in ("MOE_MODELS", "MOE_PRECISIONS", "MOE_DEVICE", "MOE_MAX_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return tiny_repo


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """scikit-image's astronaut as a JPEG file (tests skip without scikit-image)."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    from PIL import Image

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.fixture
def moe_repo(repo: Path) -> Path:
    """The test's own repository with small-moe (5 experts on 12 x 12 inputs) beside tiny."""
    Repository(repo).save("small-moe", SMALL, random_weights(SMALL, seed=2))
    return repo


@pytest.fixture
def test_split(tmp_path, monkeypatch) -> Path:
    """A 40-image Fashion-MNIST test split of noise, and an empty model repository."""
    data = tmp_path / "fashion"
    data.mkdir()
    rng = np.random.default_rng(0)
    write_split(
        data,
        "test",
        rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 40, dtype=np.uint8),
    )
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(tmp_path))
    return data
