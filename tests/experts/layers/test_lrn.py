"""The LRN layer's torch module (experts/layers/lrn.py: Lrn.torch_module) against
torch's own LocalResponseNorm (the `train` extra)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.layers.lrn import Lrn  # noqa: E402


def test_lrn_matches_torch_for_odd_sizes():
    """The banded-convolution LRN is torch's formula (which our engine shares for odd
    sizes; for even ones the numpy reference is the oracle: tests/experts/training/
    test_nets.py)."""
    x = torch.randn(3, 32, 13, 13) * 3
    for size in (1, 3, 5):
        want = torch.nn.LocalResponseNorm(size, 1e-3, 0.75, 2.0)(x)
        ours = Lrn("n", size, 1e-3, 0.75, 2.0).torch_module((32, 13, 13))
        torch.testing.assert_close(ours(x), want)
