"""Pooling (kernels/ops/pool.py: Pool2d, AdaptiveAvgPool2d) against the numpy twins:
max and average, padding, ceil mode, counting the padding or not, adaptive sizes."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from tests.kernels.helpers import FP32_NMSE, nmse, run4d

POOL_CASES = [
    # (n, c, h, w, k, s, p, ceil)
    (1, 3, 13, 13, 3, 2, 0, False),
    (7, 5, 13, 13, 3, 2, 0, True),
    (2, 3, 12, 11, 3, 2, 1, True),
    (3, 2, 10, 7, (2, 3), (2, 1), (1, 0), False),
    (1, 4, 55, 55, 3, 2, 0, True),
    (2, 3, 28, 28, 2, 2, 0, False),  # every window inside, an even window
    (1, 2, 224, 224, 3, 2, 1, False),  # a wide plane: the kernel keeps a row of W
    # every window inside: the column values slide along (pool.cl's INSIDE)
    (8, 32, 28, 28, 3, 2, 0, False),  # fashion's pool1
    (1, 2, 9, 9, 3, 1, 0, False),  # windows sharing two columns
    (2, 3, 11, 14, (3, 2), (1, 3), 0, False),  # windows a column apart, rows overlapping
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool(device, rng, case):
    n, c, h, w, k, s, p, ceil = case
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    x = rng.standard_normal((n, c, h, w), np.float32)
    op = ops.Pool2d(device, (c, h, w), "max", pair(k), pair(s), pair(p), ceil)
    want = ref.maxpool2d(x, k, s, p, ceil)
    np.testing.assert_array_equal(run4d(device, op, x), want)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("count_pad", [True, False])
def test_avgpool(device, rng, case, count_pad):
    n, c, h, w, k, s, p, ceil = case
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    x = rng.standard_normal((n, c, h, w), np.float32)
    op = ops.Pool2d(device, (c, h, w), "avg", pair(k), pair(s), pair(p), ceil, count_pad)
    want = ref.avgpool2d(x, k, s, p, ceil, count_pad)
    assert nmse(run4d(device, op, x), want) < FP32_NMSE


@pytest.mark.parametrize(
    "shape,out",
    [
        ((7, 5, 13, 13), (6, 6)),
        ((1, 3, 5, 7), (3, 2)),
        ((2, 4, 6, 6), (6, 6)),
        ((3, 2, 4, 9), (1, 1)),
    ],
)
def test_adaptive_avgpool(device, rng, shape, out):
    x = rng.standard_normal(shape, np.float32)
    op = ops.AdaptiveAvgPool2d(device, shape[1:], out)
    assert nmse(run4d(device, op, x), ref.adaptive_avgpool2d(x, out)) < FP32_NMSE


@pytest.mark.parametrize("n", [1, 5])
def test_pools_write_the_flattens_order(device, rng, n):
    """`flat`: the pool writes [N][C*OH*OW] (what a flatten after it would give), so
    the network skips the flatten (experts/networks/handoffs.py)."""
    c, h, w = 6, 13, 11
    x = rng.standard_normal((n, c, h, w), np.float32)
    pools = [
        (ops.Pool2d(device, (c, h, w), "max", (3, 3), (2, 2), (1, 1), True),
         ref.maxpool2d(x, 3, 2, 1, True)),
        (ops.AdaptiveAvgPool2d(device, (c, h, w), (2, 3)), ref.adaptive_avgpool2d(x, (2, 3))),
    ]  # fmt: skip
    for op, want in pools:
        y = device.alloc(4 * n * int(np.prod(op.out_shape)))
        op(n, device.upload(np.ascontiguousarray(x.transpose(1, 0, 2, 3))), y, flat=True)
        got = device.read(y, (n, int(np.prod(op.out_shape))))
        np.testing.assert_allclose(got, want.reshape(n, -1), rtol=1e-6, atol=1e-6)
