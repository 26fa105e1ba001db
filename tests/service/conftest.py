"""Fixtures for the service's tests: a model repository of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_repo


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A fresh repository holding tiny, at tmp_path / "models": the test may modify it."""
    return make_repo(tmp_path / "models")
