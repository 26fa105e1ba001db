"""The element-wise and data-movement launchers (kernels/ops/elementwise.py) against the
numpy twins: softmax, relu, the mixture's merge, the layout swap, gathering images,
and the router's top-k buckets (ties to the lower index)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from tests.kernels.helpers import FP32_NMSE, nmse, to_cnhw


@pytest.mark.parametrize("n,f", [(1, 10), (7, 1000), (3, 1)])
def test_softmax(device, rng, n, f):
    x = rng.standard_normal((n, f), np.float32) * 20
    op = ops.Softmax(device, f)
    y = device.alloc(4 * n * f)
    op(n, device.upload(x), y)
    got = device.read(y, (n, f))
    assert nmse(got, ref.softmax(x)) < 1e-10
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_relu(device, rng):
    x = rng.standard_normal((7, 33), np.float32)
    op = ops.Relu(device, 33)
    y = device.alloc(x.nbytes)
    op(7, device.upload(x), y)
    np.testing.assert_array_equal(device.read(y, x.shape), ref.relu(x))


@pytest.mark.parametrize("n,k,rows,f", [(5, 1, 5, 7), (7, 2, 14, 10), (1, 4, 4, 33), (3, 3, 9, 1)])
def test_merge(device, rng, n, k, rows, f):
    outputs = rng.standard_normal((rows, f), np.float32)
    idx = rng.permutation(rows)[: n * k].reshape(n, k).astype(np.int32)
    gates = rng.random((n, k), np.float32)
    gates /= gates.sum(axis=1, keepdims=True)
    op = ops.Merge(device, f)
    y = device.alloc(4 * n * f)
    op(n, k, device.upload(outputs), device.upload(idx), device.upload(gates), y)
    assert nmse(device.read(y, (n, f)), ref.merge(outputs, idx, gates)) < FP32_NMSE


@pytest.mark.parametrize("batch_outer", [True, False])
def test_swap_outer(device, rng, batch_outer):
    x = rng.standard_normal((7, 3, 5, 4), np.float32)
    op = ops.SwapOuter(device, 20, batch_outer)
    y = device.alloc(x.nbytes)
    op(7, 3, device.upload(x), y)
    np.testing.assert_array_equal(device.read(y, (3, 7, 5, 4)), to_cnhw(x))


def test_gather_images(device, rng):
    x = rng.standard_normal((4, 9, 6), np.float32)  # [C][N][inner]
    idx = np.array([8, 0, 3, 3], np.int32)
    op = ops.GatherImages(device, 4, 6)
    y = device.alloc(4 * 4 * 4 * 6)
    op(9, 4, device.upload(x), device.upload(idx), y)
    np.testing.assert_array_equal(device.read(y, (4, 4, 6)), x[:, idx])
    padded = device.alloc(4 * 4 * 7 * 6)  # into a batch of 7: 3 padding images
    op(9, 4, device.upload(x), device.upload(idx), padded, batch=7)
    np.testing.assert_array_equal(device.read(padded, (4, 7, 6))[:, :4], x[:, idx])


@pytest.mark.parametrize("n,e,k", [(1, 4, 1), (13, 16, 4), (64, 4, 1), (5, 3, 3), (9, 7, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_buckets(device, rng, n, e, k, ties):
    scores = rng.standard_normal((n, e)).astype(np.float32)
    if ties:  # few distinct values: ties must go to the lower index, as the twin's
        scores = np.round(scores).astype(np.float32)
    op = ops.TopKBuckets(device, e)
    at = 3  # the report after what the caller keeps before it (a mixture: its scores)
    sizes = (at + op.report_size(n, k), n * k, e + 1, n * k, n * k)
    bufs = [device.alloc(4 * size) for size in sizes]
    device.write(bufs[0], np.full(sizes[0], -7.0, np.float32)).wait()
    op(n, k, device.upload(scores), *bufs, at=at)
    report = device.read(bufs[0], (sizes[0],))
    np.testing.assert_array_equal(report[:at], -7.0)  # left alone
    copied, index, weight = op.split(report[at:], n, k)
    got = [device.read(b, s, np.int32) for b, s in zip(bufs[2:], sizes[2:], strict=True)]
    want = ref.topk_buckets(scores, k)
    np.testing.assert_array_equal(copied, scores)  # the host's copy of the scores
    np.testing.assert_array_equal(index, want[0])
    for got_i, want_i in zip(got, want[2:], strict=True):
        np.testing.assert_array_equal(got_i, want_i)
    for w in (weight, device.read(bufs[1], (n, k))):  # the host's and the merge's
        np.testing.assert_allclose(w, want[1], rtol=1e-6, atol=1e-7)
