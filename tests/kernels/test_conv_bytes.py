"""The integer pipeline of convolutions (kernels/ops/conv.py: Conv2d.feeds): an int8
convolution on VNNI (the implicit GEMM or the direct kernel) writing the next one's
input bytes itself (gemm.cl's BYTES_OUT), padded as that one reads them, and a max pool
between them pooling the bytes (pool.cl's pool2d_bytes), against their numpy twins on
awkward shapes: the bytes the float path gives (the float output, quantised and padded
by the consumer's pad pass)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.precision import PRECISIONS
from tests.kernels.helpers import run4d, segment_table, skip_unless_dot4, to_cnhw
from tests.kernels.test_conv import conv_twin

INT8 = PRECISIONS["int8"]


PATHS = {  # a producer's path: Conv2d's implicit and lanes
    "implicit": (True, False),
    "direct": (None, None),  # the default, here the direct kernel
    "lanes": (True, True),
    None: (True, None),  # the implicit GEMM, channels in the lanes where they fit
}


def _conv(device, rng, c, hw, m, k, stride, pad, groups=1, input_range=(-2.5, 3.0), path=None):
    """An int8 Conv2d with ReLU, its weights and bias kept for the twin (`op.twin`)."""
    wt = rng.standard_normal((m, c // groups, k, k), np.float32)
    b = rng.standard_normal(m, np.float32)
    implicit, lanes = PATHS[path]
    op = ops.Conv2d(
        device,
        (c, *hw),
        wt,
        b,
        (stride, stride),
        pad,
        groups,
        True,
        implicit,
        INT8,
        input_range,
        lanes=lanes,
    )
    op.twin = (wt, b, (stride, stride), pad, groups, True, input_range)
    return op


def _twin_bytes(y: np.ndarray, qinv, qzero, padding: tuple[int, int]) -> np.ndarray:
    """NCHW floats -> a consumer's input bytes q + 128, [N][H + 2ph][W + 2pw][C], the
    padding at the zero point's byte."""
    q = ref.quantize(y, qinv, qzero, 8) + int(qzero) + 128
    (ph, pw), fill = padding, int(np.clip(np.rint(qzero), -128, 127)) + 128
    q = np.pad(q, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    return q.transpose(0, 2, 3, 1).astype(np.uint8)


CASES = [
    # producer (c, (h, w), m, k, stride, padding, groups), consumer (m, k, padding), the
    # producer's path (PATHS; the consumer takes its default)
    ((3, (17, 19), 16, 3, 2, (1, 1), 1), (24, 3, (1, 1)), "implicit"),
    ((8, (9, 7), 32, 3, 1, (1, 0), 2), (16, 5, (2, 1)), "implicit"),  # groups; wide padding
    ((12, (6, 5), 8, 1, 1, (0, 0), 1), (8, 3, (0, 0)), "implicit"),  # a consumer without padding
    ((3, (31, 29), 16, 11, 4, (2, 2), 1), (24, 5, (2, 2)), "direct"),  # stride 4 along rows
    ((1, (12, 13), 8, 5, 1, (2, 2), 1), (16, 3, (1, 1)), "direct"),  # stride 1: windows
    # channels in the lanes, into a consumer that takes them too (runs of 13)
    ((20, (13, 13), 64, 3, 1, (1, 1), 1), (32, 3, (1, 1)), "lanes"),
    ((16, (11, 27), 64, 5, 1, (2, 2), 2), (16, 5, (2, 1)), "lanes"),  # groups; wide padding
    ((24, (9, 28), 32, 3, 2, (1, 1), 1), (8, 3, (0, 0)), "lanes"),  # a consumer without padding
]


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", CASES)
def test_a_convolution_writes_the_next_ones_input_bytes(device, rng, case, n):
    skip_unless_dot4(device, True)
    (c, hw, m, k, stride, pad, groups), (m2, k2, pad2), path = case
    a = _conv(device, rng, c, hw, m, k, stride, pad, groups, path=path)
    b = _conv(device, rng, m, a.out_shape[1:], m2, k2, 1, pad2, input_range=(0.0, 9.0))
    assert a.feeds(b) and a.dot4 and b.dot4
    assert (a.direct, a.lanes) == (path == "direct", path == "lanes")
    x = rng.standard_normal((n, c, *hw), np.float32)
    floats = run4d(device, a, x, a.scratch_bytes(n))
    _, oh, ow = a.out_shape
    y = device.alloc(b.pad.nbytes(n))
    scratch = device.alloc(a.scratch_bytes(n))
    a.launch(n, device.upload(to_cnhw(x)), y, scratch, requant=a.requantizer(b, pooled=False))
    got = device.read(y, (n, oh + 2 * pad2[0], ow + 2 * pad2[1], m), np.uint8)
    np.testing.assert_array_equal(got, _twin_bytes(floats, *b.qargs, pad2))
    # Against the numpy twin: the same integer sums; the float epilogue may differ by an
    # ulp, which moves a value lying on a rounding edge by one step.
    twin = _twin_bytes(conv_twin(INT8, x, *a.twin)[0], *b.qargs, pad2).astype(int)
    off = np.abs(got.astype(int) - twin)
    assert off.max() <= 1 and (off > 0).mean() < 1e-3
    # The consumer on those bytes, without its pad pass: its output on the floats.
    out = device.alloc(4 * n * int(np.prod(b.out_shape)))
    b.launch(n, y, out, device.alloc(b.scratch_bytes(n)), quantised_input=True)
    want = run4d(device, b, floats, b.scratch_bytes(n))
    got = device.read(out, (b.out_shape[0], n, *b.out_shape[1:])).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(got, want)


POOLS = [
    # (c, h, w, kernel, stride, padding, ceil_mode), the consumer's padding (None: a
    # fully connected layer's, [N][C*OH*OW])
    (16, 13, 11, 3, 2, (0, 0), False, (2, 1)),
    (32, 9, 10, 3, 2, (1, 1), True, (1, 1)),  # pool padding, and a ceil-mode overhang
    (40, 5, 5, 2, 2, (0, 0), True, (0, 0)),  # 40 channels: two vectors and a half
    (40, 13, 11, 3, 2, (0, 0), False, None),
    (24, 9, 10, 3, 2, (1, 1), True, None),  # a vector and a half; padding, overhang
]


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("case", POOLS)
def test_max_pool_on_bytes(device, rng, case, n):
    """pool2d_bytes against its twin: the max of the bytes, padded for the consumer
    (the padding byte is an argument: here 77), or in the flatten's order."""
    c, h, w, k, s, p, ceil, padding = case
    pool = ops.Pool2d(device, (c, h, w), "max", (k, k), (s, s), p, ceil)
    assert pool.takes_bytes
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    _, oh, ow = pool.out_shape
    pooled = ref.maxpool2d(x.transpose(0, 3, 1, 2).astype(np.float32), k, s, p, ceil)
    if padding is None:
        y = device.alloc(n * c * oh * ow)
        pool.launch_bytes(n, device.upload(x), y, None, ())
        got = device.read(y, (n, c * oh * ow), np.uint8)
        np.testing.assert_array_equal(got, pooled.reshape(n, -1).astype(np.uint8))
        return
    hp, wp = oh + 2 * padding[0], ow + 2 * padding[1]
    y = device.alloc(n * hp * wp * c)
    pool.launch_bytes(n, device.upload(x), y, padding, (np.int32(77),))
    got = device.read(y, (n, hp, wp, c), np.uint8)
    want = np.pad(
        pooled, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=77
    )
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1).astype(np.uint8))


@pytest.mark.parametrize("pooled", [False, True])
def test_grouped_experts_write_the_next_layers_bytes(device, rng, pooled):
    """A mixture's experts in one launch (images sorted by expert, panels straddling
    two): each image's bytes quantised with its own expert's parameters of the next
    layer and padded with its zero point's byte, straight or through a max pool (40
    channels: two vectors and a half)."""
    skip_unless_dot4(device, True)
    counts, (c, h, w, m) = [2, 0, 3], (8, 9, 7, 40)
    seg, expert_of = segment_table(device, counts)
    n, e = sum(counts), len(counts)
    wa = rng.standard_normal((e, m, c, 3, 3), np.float32)
    ranges = [(-2.5, 3.0), (-1.0, 1.0), (-3.0, 2.0)]
    a = ops.Conv2d(device, (c, h, w), wa, None, padding=(1, 1), relu=True, precision=INT8,
                   input_range=ranges, segments=seg)  # fmt: skip
    pool = ops.Pool2d(device, (m, h, w), "max", (3, 3), (2, 2)) if pooled else None
    hb, wb = pool.out_shape[1:] if pooled else (h, w)
    wb_ = rng.standard_normal((e, 16, m, 3, 3), np.float32)
    b = ops.Conv2d(device, (m, hb, wb), wb_, None, padding=(1, 1), relu=True, precision=INT8,
                   input_range=[(0.0, 9.0), (0.0, 4.0), (0.0, 12.0)], segments=seg)  # fmt: skip
    assert a.feeds(b)
    x = rng.standard_normal((n, c, h, w), np.float32)
    floats = run4d(device, a, x, a.scratch_bytes(n))
    y = device.alloc(n * h * w * m + b.pad.nbytes(n))
    scratch = device.alloc(a.scratch_bytes(n))
    a.launch(n, device.upload(to_cnhw(x)), y, scratch, requant=a.requantizer(b, pooled))
    if pooled:
        pooled_bytes = device.alloc(b.pad.nbytes(n))
        pool.launch_bytes(n, y, pooled_bytes, *b.input_bytes)
        y, floats = pooled_bytes, ref.maxpool2d(floats, 3, 2)
    got = device.read(y, (n, hb + 2, wb + 2, m), np.uint8)
    qp = device.read(b.qargs[0], (e, 2))
    for r in range(n):
        qinv, qzero = qp[expert_of[r]]
        want = _twin_bytes(floats[r : r + 1], qinv, qzero, (1, 1))
        np.testing.assert_array_equal(got[r : r + 1], want)


@pytest.mark.parametrize(
    "path,counts", [("implicit", None), ("lanes", None), ("implicit", [2, 0, 3])]
)
def test_a_convolution_writes_a_fully_connected_layers_input_bytes(device, rng, path, counts):
    """The last convolution into the first fully connected layer, through its max pool
    (Network.requant_links): the convolution writes bytes quantised with the layer's
    input parameters (grouped: each image's expert's), the pool writes them in the
    flatten's order, and the layer on them, without its quantising pass, gives what it
    gives on the floats pooled and flattened, bit for bit."""
    skip_unless_dot4(device, True)
    c, h, w, m, o = 16, 13, 13, 32, 20
    pool = ops.Pool2d(device, (m, h, w), "max", (3, 3), (2, 2))
    features = m * int(np.prod(pool.out_shape[1:]))
    if counts is None:
        a, n, e, seg = _conv(device, rng, c, (h, w), m, 3, 1, (1, 1), path=path), 3, 1, None
        assert a.lanes == (path == "lanes")
        ranges = (0.0, 7.0)
    else:
        seg, _ = segment_table(device, counts)
        n, e = sum(counts), len(counts)
        wa = rng.standard_normal((e, m, c, 3, 3), np.float32)
        a = ops.Conv2d(device, (c, h, w), wa, None, padding=(1, 1), relu=True, precision=INT8,
                       input_range=[(-2.5, 3.0)] * e, segments=seg)  # fmt: skip
        ranges = [(0.0, 7.0), (0.0, 2.0), (0.0, 11.0)]
    wf = rng.standard_normal((o, features) if seg is None else (e, o, features), np.float32)
    fc = ops.Linear(device, wf, None, True, INT8, ranges, segments=seg)
    assert a.feeds(fc) and fc.dot4
    x = rng.standard_normal((n, c, h, w), np.float32)
    flat = ref.maxpool2d(run4d(device, a, x, a.scratch_bytes(n)), 3, 2).reshape(n, -1)
    want = device.alloc(4 * n * o)
    fc.launch(n, device.upload(flat), want, device.alloc(fc.scratch_bytes(n)))
    y, pooled = device.alloc(n * h * w * m), device.alloc(n * features)
    a.launch(n, device.upload(to_cnhw(x)), y, device.alloc(a.scratch_bytes(n)),
             requant=a.requantizer(fc, pooled=True))  # fmt: skip
    pool.launch_bytes(n, y, pooled, *fc.input_bytes)
    got = device.alloc(4 * n * o)
    fc.launch(n, pooled, got, None, quantised_input=True)
    np.testing.assert_array_equal(device.read(got, (n, o)), device.read(want, (n, o)))


def test_what_the_integer_pipeline_takes(device, rng):
    """Pools of bytes: max only, whole eights of channels; links: DOT4 into DOT4,
    whole eights of the producer's channels, grouped alike."""
    assert not ops.Pool2d(device, (16, 8, 8), "avg", (2, 2), (2, 2)).takes_bytes
    assert not ops.Pool2d(device, (20, 8, 8), "max", (2, 2), (2, 2)).takes_bytes
    skip_unless_dot4(device, True)
    a = _conv(device, rng, 8, (9, 9), 12, 3, 1, (1, 1))
    b = _conv(device, rng, 12, (9, 9), 8, 3, 1, (1, 1))
    assert not a.feeds(b)  # 12 channels: a block of 8 rows would straddle the end
    wt = rng.standard_normal((8, 12, 3, 3), np.float32)
    floats = ops.Conv2d(device, (12, 9, 9), wt, None, (1, 1), (1, 1))
    assert not floats.feeds(b) and not b.feeds(floats)
    seg, _ = segment_table(device, [1, 1])
    grouped = ops.Conv2d(device, (8, 9, 9), rng.standard_normal((2, 16, 8, 3, 3), np.float32),
                         None, padding=(1, 1), precision=INT8, input_range=[(-1.0, 1.0)] * 2,
                         segments=seg)  # fmt: skip
    c = _conv(device, rng, 16, (9, 9), 8, 3, 1, (1, 1))
    assert not grouped.feeds(c)  # the next layer is not grouped
