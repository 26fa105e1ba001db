"""Local response normalisation (kernels/ops/lrn.py: LRN) against the numpy twin: odd
and even sizes, both powers (beta 0.75 takes the square-root path)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from tests.kernels.helpers import FP32_NMSE, nmse, run4d


@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 takes the square-root path
@pytest.mark.parametrize("n,c,size", [(1, 7, 5), (7, 13, 5), (2, 4, 4), (3, 3, 1), (2, 96, 5)])
def test_lrn(device, rng, n, c, size, beta):
    x = rng.standard_normal((n, c, 5, 3), np.float32) * 3
    op = ops.LRN(device, (c, 5, 3), size, 1e-2, beta, 2.0)
    got, want = run4d(device, op, x), ref.lrn(x, size, 1e-2, beta, 2.0)
    assert nmse(got, want) < FP32_NMSE
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
