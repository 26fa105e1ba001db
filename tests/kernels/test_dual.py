"""Dual-module inference (kernels/ops/dual.py, linear.cl's SKIP) against the plain
layer and the numpy twin: skipped outputs are 0, the rest bit for bit the plain
layer's, at every precision, in both kernel forms, grouped too; the little module
against its twins; the counts the bytes-read figures come from."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.precision import PRECISIONS, get_precision
from tests.kernels.helpers import FP32_NMSE, nmse, segment_table, skip_unless_dot4

RANGE = (-1.5, 2.0)


def _plain_and_skipped(device, op, x, estimate, threshold, n):
    """The layer's output without and with skipping, and the statistics."""
    xb = device.upload(x)
    scratch = device.alloc(max(op.scratch_bytes(n), 4))
    plain, skipped = device.alloc(4 * n * op.o), device.alloc(4 * n * op.o)
    op(n, xb, plain, scratch)
    stats = device.upload(np.zeros(3, np.int32))
    thresholds = device.upload(np.asarray(threshold, np.float32).reshape(-1))
    op.launch(n, xb, skipped, scratch, (device.upload(estimate), thresholds, stats))
    shape = (n, op.o)
    return (
        device.read(plain, shape),
        device.read(skipped, shape),
        device.read(stats, (3,), np.int32),
    )


def _tile_reads(need: np.ndarray, rb: int) -> int:
    """Rows read once per tile of rb images that has an image needing them."""
    n = len(need)
    return sum(int(need[b : b + rb].any(axis=0).sum()) for b in range(0, n, rb))


@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("name", sorted(PRECISIONS))
@pytest.mark.parametrize("n,i,o", [(1, 300, 33), (9, 1031, 17), (13, 64, 9), (2, 9000, 5)])
def test_skipped_rows_are_zero_and_the_rest_exact(device, rng, name, n, i, o, split):
    p = PRECISIONS[name]
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    op = ops.Linear(device, wt, b, True, precision=p, input_range=RANGE, split=split)
    estimate = rng.standard_normal((n, o), np.float32)
    plain, got, stats = _plain_and_skipped(device, op, x, estimate, 0.3, n)
    np.testing.assert_array_equal(got, ref.skip_insensitive(plain, estimate, 0.3))
    need = estimate >= 0.3
    rb = op._tile(n)[1]
    assert stats.tolist() == [_tile_reads(need, rb), n, int(need.sum())]


@pytest.mark.parametrize("name", sorted(PRECISIONS))
@pytest.mark.parametrize("n,i,o", [(1, 300, 33), (8, 1031, 17)])
def test_no_skip_and_all_skipped_equal_the_plain_layer(device, rng, name, n, i, o):
    """0% skip: the plain layer exactly. 100% skip: zeros, which is the plain layer
    exactly where every pre-activation is negative (a bias far below the sums)."""
    p = PRECISIONS[name]
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    for bias, threshold in ((rng.standard_normal(o, np.float32), -np.inf), (-1e5, np.inf)):
        b = np.full(o, bias, np.float32) if np.isscalar(bias) else bias
        op = ops.Linear(device, wt, b, True, precision=p, input_range=RANGE)
        estimate = rng.standard_normal((n, o), np.float32)
        plain, got, stats = _plain_and_skipped(device, op, x, estimate, threshold, n)
        np.testing.assert_array_equal(got, plain)
        if threshold > 0:
            assert not plain.any() and stats.tolist() == [0, n, 0]
        else:
            assert stats[2] == n * o


@pytest.mark.parametrize("dot4", [True, False])
def test_int8_byte_dot_products_skip_too(device, rng, dot4):
    skip_unless_dot4(device, dot4)
    n, i, o = 5, 512, 20
    wt = rng.standard_normal((o, i), np.float32)
    op = ops.Linear(
        device, wt, None, True, precision=PRECISIONS["int8"], input_range=RANGE, dot4=dot4
    )
    assert op.dot4 == dot4
    estimate = rng.standard_normal((n, o), np.float32)
    x = rng.standard_normal((n, i), np.float32)
    plain, got, _ = _plain_and_skipped(device, op, x, estimate, 0.0, n)
    np.testing.assert_array_equal(got, ref.skip_insensitive(plain, estimate, 0.0))


@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("name", ["fp32", "fp16"])
def test_grouped_experts_each_have_their_threshold(device, rng, name, split):
    counts, i, o = [3, 0, 4], 129, 11
    n, e = sum(counts), len(counts)
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((e, o, i), np.float32)
    b = rng.standard_normal((e, o), np.float32)
    seg, expert_of = segment_table(device, counts)
    op = ops.Linear(device, wt, b, True, get_precision(name), segments=seg, split=split)
    thresholds = np.array([-0.5, 9.0, 0.5], np.float32)
    estimate = rng.standard_normal((n, o), np.float32)
    plain, got, stats = _plain_and_skipped(device, op, x, estimate, thresholds, n)
    per_image = thresholds[expert_of][:, None]
    np.testing.assert_array_equal(got, ref.skip_insensitive(plain, estimate, per_image))
    assert stats[2] == int((estimate >= per_image).sum())


def test_skipping_needs_the_relu(device, rng):
    op = ops.Linear(device, rng.standard_normal((4, 8), np.float32), None, relu=False)
    buf = device.alloc(64)
    with pytest.raises(ValueError, match="needs the layer's ReLU"):
        op.launch(1, buf, buf, None, (buf, buf, buf))


def _little(device, rng, i, o, r, p):
    project = rng.standard_normal((r, i), np.float32) / np.sqrt(i)
    shift = rng.standard_normal(r, np.float32)
    weight = rng.standard_normal((o, r), np.float32) / np.sqrt(r)
    bias = rng.standard_normal(o, np.float32)
    ops_ = (
        ops.Linear(device, project, shift, precision=p, input_range=RANGE),
        ops.Linear(device, weight, bias, precision=p, input_range=(-4.0, 4.0)),
    )
    return ops_, (project, shift, weight, bias)


@pytest.mark.parametrize("name", sorted(PRECISIONS))
def test_dual_linear_against_its_twins(device, rng, name):
    """The whole layer: the little module's estimates against the linear twins, the
    output against the plain layer masked by those estimates, and the statistics."""
    p = PRECISIONS[name]
    n, i, o, r = 3, 200, 40, 8
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    big = ops.Linear(device, wt, b, True, precision=p, input_range=RANGE)
    (project, little), (pw, pb, lw, lb) = _little(device, rng, i, o, r, p)
    dual = ops.DualLinear(big, project, little, np.array([0.25]))
    xb, y, plain = device.upload(x), device.alloc(4 * n * o), device.alloc(4 * n * o)
    scratch = device.alloc(max(dual.scratch_bytes(n), 4))
    dual(n, xb, y, scratch)
    big(n, xb, plain, scratch)
    estimate = device.read(dual._buffers(n)[1], (n, o))
    if not p.quantized:
        want = ref.linear(ref.linear(x, p.round_trip(pw), pb), p.round_trip(lw), lb)
        assert nmse(estimate, want) < (FP32_NMSE if name == "fp32" else 1e-5)
    got, plain = device.read(y, (n, o)), device.read(plain, (n, o))
    np.testing.assert_array_equal(got, ref.skip_insensitive(plain, estimate, 0.25))
    stats = dual.take_stats()
    assert (stats.images, stats.computed) == (n, int((estimate >= 0.25).sum()))
    assert stats.row_bytes == i * np.dtype(p.weight_dtype).itemsize
    assert dual.take_stats().images == 0  # taken: counting starts again
    assert dual.weight_bytes == big.weight_bytes + dual.little_bytes


def test_a_little_module_that_does_not_fit_is_refused(device, rng):
    big = ops.Linear(device, rng.standard_normal((40, 200), np.float32), None, relu=True)
    (project, little), _ = _little(device, rng, 200, 41, 8, PRECISIONS["fp32"])
    with pytest.raises(ValueError, match="does not fit the layer's 200->40"):
        ops.DualLinear(big, project, little, np.zeros(1))
