"""Every OpenCL operation against its numpy twin (kernels/reference.py) on awkward
shapes: odd sizes that are no multiple of any tile, batch 1 and 7, groups, padding,
ceil-mode pooling."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.ops.winograd import WinogradConv2d
from kernels.precision import PRECISIONS, get_precision
from kernels.runtime import Device
from tests.conftest import nmse

FP32_NMSE = 1e-10  # float32 with a different summation order


def to_cnhw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3))


def run4d(device, op, x: np.ndarray, scratch_bytes: int = 0) -> np.ndarray:
    """Run a 4-D op on NCHW `x` through the device's CNHW layout; NCHW back."""
    n = x.shape[0]
    c, oh, ow = op.out_shape
    y = device.alloc(4 * n * c * oh * ow)
    scratch = device.alloc(scratch_bytes) if scratch_bytes else None
    op(n, device.upload(to_cnhw(x)), y, scratch)
    return device.read(y, (c, n, oh, ow)).transpose(1, 0, 2, 3)


CONV_CASES = [
    # (n, c, h, w, m, k, stride, pad, groups, relu)
    (1, 3, 17, 19, 5, 3, 1, 1, 1, True),
    (7, 4, 13, 11, 6, 3, 2, 0, 2, False),
    (2, 3, 31, 29, 9, 11, 4, 2, 1, True),
    (3, 6, 9, 9, 10, (5, 3), (1, 2), (2, 1), 2, True),
    (1, 16, 7, 7, 50, 1, 1, 0, 1, False),
    (7, 12, 6, 5, 20, 3, 1, 1, 4, True),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(device, rng, case):
    n, c, h, w, m, k, stride, pad, groups, relu = case
    kh, kw = (k, k) if isinstance(k, int) else k
    stride = (stride, stride) if isinstance(stride, int) else stride
    pad = (pad, pad) if isinstance(pad, int) else pad
    x = rng.standard_normal((n, c, h, w), np.float32)
    wt = rng.standard_normal((m, c // groups, kh, kw), np.float32)
    b = rng.standard_normal(m, np.float32)
    op = ops.Conv2d(device, (c, h, w), wt, b, stride, pad, groups, relu)
    got = run4d(device, op, x, op.scratch_bytes(n))
    want = ref.conv2d(x, wt, b, stride, pad, groups, relu)
    assert got.shape == want.shape
    assert nmse(got, want) < FP32_NMSE


def test_conv2d_without_bias(device, rng):
    x = rng.standard_normal((2, 3, 8, 8), np.float32)
    wt = rng.standard_normal((4, 3, 3, 3), np.float32)
    op = ops.Conv2d(device, (3, 8, 8), wt, None, (1, 1), (1, 1))
    assert nmse(run4d(device, op, x, op.scratch_bytes(2)), ref.conv2d(x, wt, padding=1)) < FP32_NMSE


POOL_CASES = [
    # (n, c, h, w, k, s, p, ceil)
    (1, 3, 13, 13, 3, 2, 0, False),
    (7, 5, 13, 13, 3, 2, 0, True),
    (2, 3, 12, 11, 3, 2, 1, True),
    (3, 2, 10, 7, (2, 3), (2, 1), (1, 0), False),
    (1, 4, 55, 55, 3, 2, 0, True),
    (2, 3, 28, 28, 2, 2, 0, False),  # every window inside, an even window
    (1, 2, 224, 224, 3, 2, 1, False),  # a wide plane: the kernel keeps a row of W
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


@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 takes the square-root path
@pytest.mark.parametrize("n,c,size", [(1, 7, 5), (7, 13, 5), (2, 4, 4), (3, 3, 1), (2, 96, 5)])
def test_lrn(device, rng, n, c, size, beta):
    x = rng.standard_normal((n, c, 5, 3), np.float32) * 3
    op = ops.LRN(device, (c, 5, 3), size, 1e-2, beta, 2.0)
    got, want = run4d(device, op, x), ref.lrn(x, size, 1e-2, beta, 2.0)
    assert nmse(got, want) < FP32_NMSE
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize(
    "n,i,o,relu",
    [
        (1, 37, 5, True),
        (7, 300, 33, False),
        (8, 1024, 17, True),
        (3, 16, 1, False),
        (13, 129, 10, True),
        (2, 9216, 40, True),
    ],
)
def test_linear(device, rng, n, i, o, relu):
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    op = ops.Linear(device, wt, b, relu)
    y = device.alloc(4 * n * o)
    op(n, device.upload(x), y)
    assert nmse(device.read(y, (n, o)), ref.linear(x, wt, b, relu)) < FP32_NMSE


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


@pytest.mark.parametrize(
    ("extents", "limit", "units", "want"),
    [
        ((27, 64), 4096, 2, (27, 32)),
        ((13, 192), 4096, 2, (13, 96)),
        ((16, 256), 4096, 2, (16, 128)),
        ((13, 640), 4096, 1, (13, 160)),
        ((7, 1), 4096, 2, (1, 1)),
        ((1, 40), 4096, 16, (1, 2)),
        ((64, 64), 256, 2, (64, 4)),
        ((97,), 64, 2, (1,)),
        ((1,), 4096, 8, (1,)),
    ],
)
def test_work_group_divides_the_per_image_extents(extents, limit, units, want):
    """PoCL's own choices at batch 1 on 2 compute units are the first three."""
    from kernels.runtime import _work_group

    local = _work_group(extents, limit, units)
    assert local == want
    assert all(e % g == 0 for e, g in zip(extents, local, strict=True))
    assert int(np.prod(local)) <= limit


def test_profiling_labels_direct_and_recorded_launches(device, rng):
    """A profiling device keeps an event per launch with the label in force when it was
    made, or recorded (a tape's replays keep the recording's labels); nested labels
    join with dots. A device without profiling keeps nothing."""
    from kernels.runtime import Device

    assert device.events is None
    prof = Device(device.info.index, profile=True)
    x = rng.standard_normal((7, 3, 20), np.float32)
    op = ops.SwapOuter(prof, 20, True)
    src, dst = prof.upload(x), prof.alloc(x.nbytes)
    with prof.labelled("net"):
        with prof.labelled("swap"):
            op(7, 3, src, dst)
        with prof.record() as launches, prof.labelled("taped"):
            op(7, 3, src, dst)
    prof.tape(launches).replay()
    prof.finish()
    assert [(label, name) for label, name, _ in prof.events] == [
        ("net.swap", "swap_outer"),
        ("net.taped", "swap_outer"),
    ]
    assert all(e.profile.end >= e.profile.start > 0 for _, _, e in prof.events)


@pytest.mark.parametrize(
    "n,c,h,w,m,r,pad,relu,tile",
    [
        (1, 5, 13, 13, 9, 3, 1, True, 4),
        (7, 3, 8, 11, 17, 3, 1, False, 4),
        (2, 16, 6, 7, 8, 3, 0, True, 4),
        (3, 4, 5, 5, 50, 3, (1, 0), True, 4),
        (2, 7, 13, 13, 9, 3, 1, True, 2),
        (3, 5, 6, 9, 11, 3, 1, False, 3),
        (1, 6, 27, 27, 12, 5, 2, True, 2),
        (7, 3, 9, 8, 5, 5, (2, 1), False, 2),
        (1, 48, 27, 27, 20, 5, 2, True, 4),
        (3, 5, 9, 11, 7, 5, (2, 1), False, 4),
    ],
)
def test_winograd_conv2d(device, rng, n, c, h, w, m, r, pad, relu, tile):
    pad = (pad, pad) if isinstance(pad, int) else pad
    x = rng.standard_normal((n, c, h, w), np.float32)
    wt = rng.standard_normal((m, c, r, r), np.float32)
    b = rng.standard_normal(m, np.float32)
    op = WinogradConv2d(device, (c, h, w), wt, b, pad, relu, tile)
    got = run4d(device, op, x, op.scratch_bytes(n))
    assert nmse(got, ref.conv2d(x, wt, b, 1, pad, 1, relu)) < FP32_NMSE


def test_conv2d_im2col_fallback(device, rng):
    """The path taken where a B panel does not fit the device's local memory (GPUs)."""
    x = rng.standard_normal((3, 6, 9, 10), np.float32)
    wt = rng.standard_normal((10, 3, 3, 5), np.float32)
    b = rng.standard_normal(10, np.float32)
    op = ops.Conv2d(device, (6, 9, 10), wt, b, (2, 1), (1, 2), 2, True, implicit=False)
    got = run4d(device, op, x, op.scratch_bytes(3))
    assert nmse(got, ref.conv2d(x, wt, b, (2, 1), (1, 2), 2, True)) < FP32_NMSE


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


# -- precisions (kernels/precision.py): the twins compute with the stored weights ----------

FLOATS = [n for n, p in PRECISIONS.items() if not p.quantized]
QUANTIZED = [n for n, p in PRECISIONS.items() if p.quantized]


def assert_dequantized_close(got: np.ndarray, want: np.ndarray, scale_of: np.ndarray) -> None:
    """Quantised kernels sum exactly in integers; only the float epilogue (acc * scale +
    bias, which the device may fuse into one fma) may differ: by an ulp or two of the
    larger term. `scale_of` is that term's magnitude, elementwise. An integer sum off
    by one would miss by a whole scale step, far more than that."""
    tol = 2 * np.spacing(np.abs(scale_of).astype(np.float32))
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs differ beyond an ulp"


def conv_twin(p, x, wt, b, stride, pad, groups, relu, input_range):
    """The numpy result for a Conv2d at precision p, and the tolerance scale."""
    if not p.quantized:
        return ref.conv2d(x, p.round_trip(wt), b, stride, pad, groups, relu), None
    m, mg = wt.shape[0], wt.shape[0] // groups
    parts = [
        p.prepare(wt[g * mg : (g + 1) * mg].reshape(mg, -1), input_range) for g in range(groups)
    ]
    q = np.concatenate([pp.weights for pp in parts]).reshape(wt.shape)
    scale = np.concatenate([pp.scale for pp in parts])
    qinv, qzero = parts[0].qinv, parts[0].qzero
    want = ref.conv2d_quantized(x, q, scale, qinv, qzero, p.bits, b, stride, pad, groups, relu)
    raw = ref.conv2d_quantized(x, q, scale, qinv, qzero, p.bits, None, stride, pad, groups)
    return want, np.abs(raw) + np.abs(b).reshape(1, m, 1, 1)


@pytest.mark.parametrize("name", sorted(PRECISIONS))
@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("case", CONV_CASES[:4])
def test_conv2d_precisions(device, rng, name, implicit, case):
    check_conv_precision(device, rng, PRECISIONS[name], case, implicit)


@pytest.mark.parametrize("dot4", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_int8_conv_byte_dot_products(device, rng, case, dot4):
    """int8 on VNNI's byte dot products (K in groups of four, inputs offset by 128)
    and in float lanes: the same exact sums, on every awkward shape."""
    skip_unless_dot4(device, dot4)
    op = check_conv_precision(device, rng, PRECISIONS["int8"], case, True, dot4)
    assert op.dot4 == dot4


DIRECT_CASES = [
    # (n, c, h, w, m, k, stride, pad, groups, relu): stride 1 only
    (8, 1, 28, 28, 32, 5, 1, 2, 1, True),  # the Fashion-MNIST stem's conv1
    (1, 3, 17, 19, 5, 3, 1, 1, 1, True),  # fewer filters than a block of 8
    (3, 6, 9, 9, 10, (5, 3), 1, (2, 1), 2, True),  # groups, a non-square filter
    (2, 2, 11, 61, 13, 3, 1, 1, 1, False),  # rows of 61 columns: two chunks each
    (7, 12, 6, 5, 20, 3, 1, 1, 4, True),  # rows narrower than one vector
    (1, 20, 5, 5, 9, 3, 1, 0, 1, False),  # K = 180, past the default's limit
]


@pytest.mark.parametrize("name", sorted(PRECISIONS))
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_conv2d(device, rng, name, case):
    """gemm.cl's conv_direct against the numpy twin at every precision."""
    op = check_conv_precision(device, rng, PRECISIONS[name], case, None, direct=True)
    assert op.direct and not op.implicit


@pytest.mark.parametrize(
    "shape,stride,precision,options,direct",
    [
        ((32, 1, 5, 5), 1, "fp32", {}, True),
        ((32, 1, 5, 5), 1, "int8", {}, True),
        ((32, 1, 5, 5), 1, "int16", {}, False),  # long accumulators: slower direct
        ((32, 1, 5, 5), 2, "fp32", {}, False),
        ((32, 16, 1, 1), 1, "fp32", {}, False),  # a plain GEMM: nothing to gather
        ((32, 17, 3, 3), 1, "fp32", {}, False),  # K = 153 > DIRECT_MAX_K
        ((32, 1, 5, 5), 1, "fp32", {"implicit": True}, False),
        ((32, 1, 5, 5), 1, "int8", {"dot4": False}, False),
    ],
)
def test_conv2d_picks_direct(device, shape, stride, precision, options, direct):
    if not device.is_cpu:
        pytest.skip("the direct convolution is a default on CPU devices only")
    op = ops.Conv2d(
        device,
        (shape[1], 28, 28),
        np.zeros(shape, np.float32),
        None,
        (stride, stride),
        (2, 2),
        precision=PRECISIONS[precision],
        input_range=(-1.0, 1.0),
        **options,
    )
    assert op.direct == direct


def test_direct_conv2d_needs_stride_one(device):
    with pytest.raises(ValueError, match="direct convolution needs stride 1"):
        ops.Conv2d(
            device, (1, 28, 28), np.zeros((8, 1, 5, 5), np.float32), None, (2, 2), direct=True
        )


def skip_unless_dot4(device, dot4: bool) -> None:
    if dot4 and not device.dot4:
        pytest.skip("this device has no AVX-512 VNNI byte dot products (Device.dot4)")


def check_conv_precision(device, rng, p, case, implicit, dot4=None, direct=None):
    n, c, h, w, m, k, stride, pad, groups, relu = case
    kh, kw = (k, k) if isinstance(k, int) else k
    if implicit:
        skip_unless_panel_fits(device, c // groups * kh * kw)
    x = rng.standard_normal((n, c, h, w), np.float32)
    wt = rng.standard_normal((m, c // groups, kh, kw), np.float32)
    b = rng.standard_normal(m, np.float32)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    input_range = (-2.5, 3.0)  # some inputs fall outside and saturate
    op = ops.Conv2d(
        device,
        (c, h, w),
        wt,
        b,
        (sh, sw),
        (ph, pw),
        groups,
        relu,
        implicit,
        precision=p,
        input_range=input_range,
        dot4=dot4,
        direct=direct,
    )
    got = run4d(device, op, x, op.scratch_bytes(n))
    want, scale_of = conv_twin(p, x, wt, b, (sh, sw), (ph, pw), groups, relu, input_range)
    if p.quantized:
        assert_dequantized_close(got, want, scale_of)
    else:
        assert nmse(got, want) < FP32_NMSE
    return op


def skip_unless_panel_fits(device, k: int) -> None:
    """The implicit GEMM needs a K x 16 float panel in local memory (GPUs: 48-64 KiB)."""
    have = device.cl_device.local_mem_size
    if 64 * k > have:
        pytest.skip(f"the device's {have} bytes of local memory hold no implicit panel of K={k}")


@pytest.mark.parametrize(
    ("implicit", "dot4", "direct"),
    [(True, True, False), (True, False, False), (False, False, False), (None, None, True)],
)
def test_int8_conv_sums_past_one_chunk_exactly(device, rng, implicit, dot4, direct):
    """K = 64 * 25 = 1600 > 512: the int8 GEMM flushes its float partial sums four
    times. Row 0 is the worst case, every product 127 * 255, a sum of 51.8M (past
    2^24, where a float would start dropping integers); with dot4, 1600 products of
    127 * 255 in an int lane, less the offset correction."""
    skip_unless_dot4(device, dot4)
    if implicit:
        skip_unless_panel_fits(device, 1600)
    p = PRECISIONS["int8"]
    wt = np.where(rng.random((9, 64, 5, 5)) < 0.5, -1.0, 1.0).astype(np.float32)
    wt[0] = 1.0
    x = rng.uniform(-1, 10, (2, 64, 5, 5)).astype(np.float32)
    x[0] = 10.0  # saturates at offset 255
    input_range = (0.0, 1.0)  # zero point -128: offsets 0 .. 255
    op = ops.Conv2d(
        device,
        (64, 5, 5),
        wt,
        None,
        (1, 1),
        (0, 0),
        1,
        False,
        implicit,
        precision=p,
        input_range=input_range,
        dot4=dot4,
        direct=direct,
    )
    assert (op.dot4, op.direct) == (bool(dot4), direct)
    got = run4d(device, op, x, op.scratch_bytes(2))
    want, scale_of = conv_twin(p, x, wt, np.zeros(9, np.float32), 1, 0, 1, False, input_range)
    assert_dequantized_close(got, want, scale_of)
    assert want[0, 0, 0, 0] == pytest.approx(1600.0, rel=1e-6)  # 1600 * 127 * 255 * scale


def test_implicit_conv_panel_width_fits_local_memory(device, rng):
    """A forced implicit convolution takes the widest panel the device's local memory
    holds (GPUs: often one of 16 columns), and refuses, before any upload, a K whose
    narrowest panel does not fit."""
    have = device.cl_device.local_mem_size
    k_one = have // 64 // 9  # channels whose 3x3 panel just fits at NV=1
    wt = rng.standard_normal((4, k_one, 3, 3), np.float32)
    op = ops.Conv2d(device, (k_one, 5, 5), wt, None, (1, 1), (1, 1), 1, False, True)
    assert op.widest_nv == min(device.widest_panel, have // (64 * k_one * 9))
    x = rng.standard_normal((1, k_one, 5, 5), np.float32)
    got = run4d(device, op, x, op.scratch_bytes(1))
    assert nmse(got, ref.conv2d(x, wt, None, 1, 1)) < FP32_NMSE
    too_wide = np.zeros((4, have // 64 + 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="local memory"):
        ops.Conv2d(device, (too_wide.shape[1], 2, 2), too_wide, None, implicit=True)


@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("name", sorted(PRECISIONS))
@pytest.mark.parametrize("n,i,o", [(1, 300, 33), (8, 1031, 17), (13, 64, 9), (2, 9000, 5)])
def test_linear_precisions(device, rng, name, n, i, o, split):
    """Both forms (whole rows per work-item for CPUs, K split over a work-group for
    GPUs) on whichever device runs the tests."""
    p = PRECISIONS[name]
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    input_range = (-1.5, 2.0)
    op = ops.Linear(device, wt, b, True, precision=p, input_range=input_range, split=split)
    y = device.alloc(4 * n * o)
    op(n, device.upload(x), y, device.alloc(op.scratch_bytes(n)))
    got = device.read(y, (n, o))
    assert op.weight_bytes == wt.size * np.dtype(p.weight_dtype).itemsize + 8 * o
    if not p.quantized:
        assert nmse(got, ref.linear(x, p.round_trip(wt), b, True)) < FP32_NMSE
        return
    pp = p.prepare(wt, input_range)
    args = (pp.weights, pp.scale, pp.qinv, pp.qzero, p.bits)
    want = ref.linear_quantized(x, *args, b, True)
    scale_of = np.abs(ref.linear_quantized(x, *args)) + np.abs(b)
    assert_dequantized_close(got, want, scale_of)


@pytest.mark.parametrize("dot4", [True, False])
@pytest.mark.parametrize("n,i,o", [(1, 300, 33), (13, 64, 9), (9, 9216, 7), (2, 4, 3)])
def test_int8_linear_byte_dot_products(device, rng, n, i, o, dot4):
    """int8 on VNNI (64 k a step, a scalar tail, RO/RB tiles cut at O and N) and in
    float lanes: the same exact sums. Row 0 is the worst case: every product 127 *
    255 (offset 255 after the +128), 9216 of them: 3.0e8, summed in int32."""
    skip_unless_dot4(device, dot4)
    p = PRECISIONS["int8"]
    x = rng.uniform(-1, 3, (n, i)).astype(np.float32)
    x[0] = 3.0  # past the range: saturates at q = 127
    wt = rng.standard_normal((o, i), np.float32)
    wt[0] = 1.0
    b = rng.standard_normal(o, np.float32)
    input_range = (0.0, 2.0)  # zero point -128
    op = ops.Linear(device, wt, b, False, precision=p, input_range=input_range, dot4=dot4)
    assert op.dot4 == dot4
    y = device.alloc(4 * n * o)
    op(n, device.upload(x), y, device.alloc(op.scratch_bytes(n)))
    pp = p.prepare(wt, input_range)
    args = (pp.weights, pp.scale, pp.qinv, pp.qzero, p.bits)
    want = ref.linear_quantized(x, *args, b, False)
    scale_of = np.abs(ref.linear_quantized(x, *args)) + np.abs(b)
    assert_dequantized_close(device.read(y, (n, o)), want, scale_of)
    if dot4:
        with pytest.raises(ValueError, match="dot4 needs int8 rows of 4n bytes"):
            ops.Linear(device, wt[:, :-1], b, precision=p, input_range=input_range, dot4=True)


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_layers_need_a_range(device, rng, name):
    with pytest.raises(ValueError, match=f"linear: {name} needs the calibrated range"):
        ops.Linear(
            device, rng.standard_normal((4, 8), np.float32), None, precision=PRECISIONS[name]
        )


def test_accumulator_overflow_is_refused_before_upload(device):
    """70,000 int8 weights at 127 against inputs at offset 255 could pass 2^31."""
    wt = np.ones((2, 70_000), np.float32)
    with pytest.raises(ValueError, match="could overflow the int32 accumulator"):
        ops.Linear(device, wt, None, precision=PRECISIONS["int8"], input_range=(0, 1))
    ops.Linear(device, wt, None, precision=PRECISIONS["int16"], input_range=(0, 1))  # int64


@pytest.mark.parametrize("name", QUANTIZED)
def test_weight_quantization_round_trip(rng, name):
    p = PRECISIONS[name]
    w = rng.standard_normal((6, 50), np.float32) * np.float32([[1e-3], [1], [30], [0], [2], [5]])
    q, scale = p.quantize_weights(w)
    assert q.dtype == p.weight_dtype and np.abs(q).max() == p.weight_max
    assert np.all(np.abs(w - q * scale[:, None]) <= scale[:, None] / 2 * (1 + 1e-6))
    assert not q[3].any() and scale[3] == 1.0  # an all-zero row stays zero
    np.testing.assert_array_equal(p.round_trip(w), (q * scale[:, None]).astype(np.float32))


@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("low,high", [(-3.0, 5.0), (0.0, 6.0), (0.5, 2.0), (-4.0, -1.0)])
def test_activation_quantization_round_trip(rng, name, low, high):
    """Zero is exact (padding); values inside the range come back within half a step;
    values outside saturate at the range's ends."""
    p = PRECISIONS[name]
    scale, zero = p.activation_params(low, high)
    x = rng.uniform(min(low, 0), max(high, 0), 1000).astype(np.float32)
    x[:3] = [0.0, min(low, 0), max(high, 0)]
    back = ref.quantize(x, np.float32(1 / scale), zero, p.bits) * scale
    assert back[0] == 0.0
    assert np.abs(back - x).max() <= scale * 0.51  # float32 x / scale rounds too
    far = ref.quantize(np.float32([1e6, -1e6]), np.float32(1 / scale), zero, p.bits) * scale
    assert far[0] == pytest.approx(max(high, 0), abs=scale)
    assert far[1] == pytest.approx(min(low, 0), abs=scale)


@pytest.mark.parametrize("r", [3, 5])
def test_winograd_fp16_weights(device, rng, r):
    """Winograd stores its transformed weights U at the precision, not g: rounding U to
    half costs more than rounding g (F(4x4, 3x3)'s transforms amplify it; measured
    nmse ~5e-6 against ~1e-7 for direct convolution with half weights)."""
    x = rng.standard_normal((2, 16, 13, 13), np.float32)
    wt = rng.standard_normal((24, 16, r, r), np.float32)
    pad = (r // 2, r // 2)
    op = WinogradConv2d(device, (16, 13, 13), wt, None, pad, precision=PRECISIONS["fp16"])
    got = run4d(device, op, x, op.scratch_bytes(2))
    err = nmse(got, ref.conv2d(x, wt, None, 1, pad))
    assert 1e-12 < err < 2e-5  # rounded (so not fp32), but only by half precision


@pytest.mark.parametrize(
    "shape,stride,groups,precision,winograd",
    [
        ((16, 8, 3, 3), 1, 1, "fp32", True),
        ((16, 48, 5, 5), 1, 1, "fp16", True),
        ((16, 47, 5, 5), 1, 1, "fp32", False),  # too few channels to pay for the transforms
        ((16, 48, 5, 5), 2, 1, "fp32", False),
        ((16, 24, 5, 5), 1, 2, "fp32", False),
        ((16, 48, 5, 5), 1, 1, "int8", False),
        ((16, 48, 3, 5), 1, 1, "fp32", False),
        ((16, 48, 7, 7), 1, 1, "fp32", False),
    ],
)
def test_conv2d_picks_winograd(device, shape, stride, groups, precision, winograd):
    wt = np.zeros(shape, np.float32)
    c = shape[1] * groups
    op = ops.conv2d(
        device,
        (c, 13, 13),
        wt,
        None,
        (stride, stride),
        (1, 1),
        groups,
        precision=PRECISIONS[precision],
        input_range=(-1.0, 1.0),
    )
    assert isinstance(op, WinogradConv2d) == winograd


def test_unknown_precision_is_named():
    supported = "supported: fp32, fp16, int16, int8"
    with pytest.raises(ValueError, match=f"unknown precision 'fp8'; {supported}"):
        get_precision("fp8")


# -- grouped experts: one launch, each image with its expert's weights -----------------


def segment_table(device, counts: list[int]):
    """The device table of expert row offsets, and each row's expert."""
    seg = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return device.upload(seg), np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("name", ["fp32", "fp16"])
@pytest.mark.parametrize(
    "counts,c,hw,m,r",
    [
        ([2, 0, 5], 5, 6, 11, 3),  # an expert with no image between two with some
        ([1, 1, 1, 1, 9], 7, 13, 9, 3),  # 16-tile images: panels straddle four experts
        ([0, 0, 3], 3, 5, 20, 3),
        ([37], 4, 4, 8, 3),  # one expert holds every image
        ([2, 0, 3, 1], 48, 9, 10, 5),  # alexnet-moe's experts: 5x5 over 48 channels
    ],
)
def test_grouped_winograd_conv2d(device, rng, name, counts, c, hw, m, r):
    """Three padding images follow the experts' (their outputs are not looked at)."""
    e = len(counts)
    n = sum(counts) + 3
    pad = (r // 2, r // 2)
    x = rng.standard_normal((n, c, hw, hw), np.float32)
    wt = rng.standard_normal((e, m, c, r, r), np.float32)
    b = rng.standard_normal((e, m), np.float32)
    seg, expert_of = segment_table(device, counts)
    op = ops.grouped_conv2d(
        device, (c, hw, hw), wt, b, (1, 1), pad, 1, True, get_precision(name), seg
    )
    assert op.tile == (2 if r == 3 and hw <= 8 else 4)  # GROUPED_SMALL_TILE_MAX
    got = run4d(device, op, x, op.scratch_bytes(n))[: n - 3]
    want = np.concatenate(
        [
            ref.conv2d(x[i : i + 1], wt[expert_of[i]], b[expert_of[i]], 1, pad, 1, True)
            for i in range(n - 3)
        ]
    )
    # half U: F(4x4, 5x5)'s transforms amplify its rounding more (1.7e-5 measured)
    assert nmse(got, want) < (FP32_NMSE if name == "fp32" else 1e-5 if r == 3 else 3e-5)


@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("name", ["fp32", "fp16"])
@pytest.mark.parametrize("counts,i,o", [([3, 0, 1], 33, 10), ([1] * 9, 16, 5), ([0, 12], 129, 7)])
def test_grouped_linear(device, rng, name, counts, i, o, split):
    """Two padding rows follow the experts' and keep what their output held."""
    n, e = sum(counts), len(counts)
    x = rng.standard_normal((n + 2, i), np.float32)
    wt = rng.standard_normal((e, o, i), np.float32)
    b = rng.standard_normal((e, o), np.float32)
    seg, expert_of = segment_table(device, counts)
    op = ops.Linear(device, wt, b, True, get_precision(name), segments=seg, split=split)
    y = device.alloc(4 * (n + 2) * o)
    device.write(y, np.full((n + 2, o), 7.0, np.float32))
    op(n + 2, device.upload(x), y)
    got = device.read(y, (n + 2, o))
    want = np.stack(
        [ref.linear(x[r : r + 1], wt[expert_of[r]], b[expert_of[r]], True)[0] for r in range(n)]
    )
    assert nmse(got[:n], want) < (FP32_NMSE if name == "fp32" else 1e-5)
    assert (got[n:] == 7.0).all()


def test_grouped_kernels_refuse_what_they_cannot_group(device, rng):
    seg, _ = segment_table(device, [1, 1])
    with pytest.raises(ValueError, match="stride-1 ungrouped 3x3"):
        ops.grouped_conv2d(
            device,
            (3, 8, 8),
            rng.standard_normal((2, 4, 3, 5, 5), np.float32),
            None,
            (1, 1),
            (2, 2),
            1,
            False,
            get_precision("fp32"),
            seg,
        )
    with pytest.raises(ValueError, match="grouped experts cannot run int8"):
        ops.Linear(
            device,
            rng.standard_normal((2, 4, 8), np.float32),
            None,
            False,
            get_precision("int8"),
            (-1.0, 1.0),
            segments=seg,
        )


@pytest.mark.parametrize("n,e,k", [(1, 4, 1), (13, 16, 4), (64, 4, 1), (5, 3, 3), (9, 7, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_buckets(device, rng, n, e, k, ties):
    scores = rng.standard_normal((n, e)).astype(np.float32)
    if ties:  # few distinct values: ties must go to the lower index, as the twin's
        scores = np.round(scores).astype(np.float32)
    op = ops.TopKBuckets(device, e)
    bufs = [device.alloc(4 * size) for size in (n * k, n * k, e + 1, n * k, n * k)]
    op(n, k, device.upload(scores), *bufs)
    shapes = [(n, k), (n, k), (e + 1,), (n * k,), (n * k,)]
    got = [
        device.read(b, s, np.float32 if i == 1 else np.int32)
        for i, (b, s) in enumerate(zip(bufs, shapes, strict=True))
    ]
    want = ref.topk_buckets(scores, k)
    for i in (0, 2, 3, 4):
        np.testing.assert_array_equal(got[i], want[i])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)


def test_dot4_only_for_implicit_int8_where_the_device_has_it(device, rng, monkeypatch):
    wt = rng.standard_normal((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="dot4 needs an implicit int8 convolution"):
        ops.Conv2d(device, (3, 8, 8), wt, None, dot4=True)  # fp32
    monkeypatch.setenv("MOE_INT8_DOT4", "0")
    assert not Device(device.info.index).dot4
    with pytest.raises(ValueError, match="dot4 needs"):
        ops.Conv2d(
            Device(device.info.index),
            (3, 8, 8),
            wt,
            None,
            implicit=True,
            precision=PRECISIONS["int8"],
            input_range=(-1.0, 1.0),
            dot4=True,
        )
