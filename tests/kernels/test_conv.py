"""The convolution launcher (kernels/ops/conv.py: Conv2d) against its numpy twin on
awkward shapes (odd sizes that are no multiple of any tile, batch 1 and 7, groups,
padding): the implicit GEMM, the im2col fallback and the direct kernel, at every
precision, int8 on byte dot products, and the choices between them."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.precision import PRECISIONS
from kernels.runtime import Device
from tests.kernels.helpers import (
    FP32_NMSE,
    UNPACKED,
    assert_dequantized_close,
    nmse,
    run4d,
    segment_table,
    skip_unless_dot4,
    skip_unless_panel_fits,
    to_cnhw,
)

CONV_CASES = [
    # (n, c, h, w, m, k, stride, pad, groups, relu)
    (1, 3, 17, 19, 5, 3, 1, 1, 1, True),
    (7, 4, 13, 11, 6, 3, 2, 0, 2, False),
    (2, 3, 31, 29, 9, 11, 4, 2, 1, True),
    (3, 6, 9, 9, 10, (5, 3), (1, 2), (2, 1), 2, True),
    (1, 16, 7, 7, 50, 1, 1, 0, 1, False),
    (7, 12, 6, 5, 20, 3, 1, 1, 4, True),
    (2, 40, 7, 6, 24, 3, 1, 1, 2, True),  # DOT4's input 16 channels at a time, and 8
    (5, 24, 9, 7, 16, 3, 1, 1, 1, True),  # pad2d_channels: 3 of 55 rows an item, the last 1
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


def test_conv2d_im2col_fallback(device, rng):
    """The path taken where a B panel does not fit the device's local memory (GPUs)."""
    x = rng.standard_normal((3, 6, 9, 10), np.float32)
    wt = rng.standard_normal((10, 3, 3, 5), np.float32)
    b = rng.standard_normal(10, np.float32)
    op = ops.Conv2d(device, (6, 9, 10), wt, b, (2, 1), (1, 2), 2, True, implicit=False)
    got = run4d(device, op, x, op.scratch_bytes(3))
    assert nmse(got, ref.conv2d(x, wt, b, (2, 1), (1, 2), 2, True)) < FP32_NMSE


# -- precisions (kernels/precision.py): the twins compute with the stored weights ----------


def conv_twin(p, x, wt, b, stride, pad, groups, relu, input_range, high_plane=False):
    """The numpy result for a Conv2d at precision p, and the tolerance scale
    (`high_plane`: int8 read from int16's, kernels/ops/store.py)."""
    if not p.quantized:
        return ref.conv2d(x, p.round_trip(wt), b, stride, pad, groups, relu), None
    m, mg = wt.shape[0], wt.shape[0] // groups
    parts = [
        p.prepare(wt[g * mg : (g + 1) * mg].reshape(mg, -1), input_range, high_plane=high_plane)
        for g in range(groups)
    ]
    q = np.concatenate([pp.weights for pp in parts]).reshape(wt.shape)
    scale = np.concatenate([pp.scale for pp in parts])
    qinv, qzero = parts[0].qinv, parts[0].qzero
    want = ref.conv2d_quantized(x, q, scale, qinv, qzero, p.bits, b, stride, pad, groups, relu)
    raw = ref.conv2d_quantized(x, q, scale, qinv, qzero, p.bits, None, stride, pad, groups)
    return want, np.abs(raw) + np.abs(b).reshape(1, m, 1, 1)


def check_conv_precision(
    device, rng, p, case, implicit, dot4=None, direct=None, store=None, lanes=None
):
    """The launcher at precision p against its twin (`store`: built with one, under the
    key "conv"); returns the launcher."""
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
        store=store,
        key="conv",
        lanes=lanes,
    )
    got = run4d(device, op, x, op.scratch_bytes(n))
    geometry = (sh, sw), (ph, pw), groups, relu, input_range
    want, scale_of = conv_twin(p, x, wt, b, *geometry, high_plane=op.high_plane)
    if p.quantized:
        assert_dequantized_close(got, want, scale_of)
    else:
        assert nmse(got, want) < FP32_NMSE
    return op


@pytest.mark.parametrize("name", UNPACKED)
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
    assert op.pad.channels4 == (dot4 and case[1] // case[8] % 4 == 0)  # pad2d_channels


LANES_CASES = [
    # (n, c, h, w, m, k, stride, pad, groups, relu): whole 32s of output channels a group
    (3, 20, 13, 13, 64, 3, 1, 1, 1, True),  # 13 pixels a work-item; channels padded to 24
    (2, 16, 11, 27, 32, 5, 1, 2, 1, False),  # rows of 27: runs of 9
    (1, 24, 9, 28, 64, 3, 2, 1, 2, True),  # groups of 32; stride 2: rows of 14
    (2, 8, 7, 17, 32, (3, 1), (1, 2), (1, 0), 1, True),  # a prime row of 17: one pixel a run
    (7, 12, 6, 5, 64, 1, 1, 0, 1, False),  # 1 x 1 filters, rows of 5
    (1, 128, 9, 9, 96, 3, 1, 1, 1, False),  # two blocks of 32 a work-item, then one
]


@pytest.mark.parametrize("case", LANES_CASES)
def test_int8_conv_with_channels_in_the_lanes(device, rng, case):
    """int8 on VNNI with output channels in the lanes (conv_lanes.cl): each input int
    broadcast against sixteen channels' weights, read where pad2d_channels put it; the
    same exact sums as the twin's, on rows of every run length (one pixel to 14)."""
    skip_unless_dot4(device, True)
    op = check_conv_precision(device, rng, PRECISIONS["int8"], case, True, lanes=True)
    assert op.lanes and op.dot4 and op.effective(case[0]) == {"algorithm": "lanes"}


@pytest.mark.parametrize(
    ("shape", "m", "k", "groups", "lanes"),
    [
        ((64, 27, 27), 192, 5, 1, True),  # AlexNet's conv2: runs of 9, K = 1600
        ((192, 13, 13), 384, 3, 1, True),  # conv3: runs of 13
        ((96, 27, 27), 128, 5, 2, True),  # groups of 64
        ((64, 27, 27), 200, 5, 1, False),  # output channels not in 32s
        ((192, 6, 6), 320, 3, 1, True),  # Fashion-MNIST's conv3: runs of 6
        ((128, 5, 5), 64, 3, 1, False),  # runs of 5: too few pixels a broadcast
        ((128, 17, 17), 64, 3, 1, False),  # a prime row past 14
        ((32, 13, 13), 192, 3, 1, False),  # K = 288: Fashion-MNIST's conv2, too short
    ],
)
def test_channels_in_the_lanes_by_default_where_they_fit(device, rng, shape, m, k, groups, lanes):
    skip_unless_dot4(device, True)
    wt = rng.standard_normal((m, shape[0] // groups, k, k), np.float32)
    op = ops.Conv2d(
        device,
        shape,
        wt,
        None,
        (1, 1),
        (k // 2, k // 2),
        groups,
        precision=PRECISIONS["int8"],
        input_range=(-1.0, 1.0),
    )
    assert op.lanes == lanes and op.implicit


def test_channels_in_the_lanes_need_whole_blocks(device, rng):
    skip_unless_dot4(device, True)
    wt = rng.standard_normal((40, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match="whole 32s"):
        ops.Conv2d(
            device,
            (8, 9, 9),
            wt,
            None,
            precision=PRECISIONS["int8"],
            input_range=(-1.0, 1.0),
            lanes=True,
        )


DIRECT_CASES = [
    # (n, c, h, w, m, k, stride, pad, groups, relu): stride 1 only
    (8, 1, 28, 28, 32, 5, 1, 2, 1, True),  # the Fashion-MNIST stem's conv1
    (1, 3, 17, 19, 5, 3, 1, 1, 1, True),  # fewer filters than a block of 8
    (3, 6, 9, 9, 10, (5, 3), 1, (2, 1), 2, True),  # groups, a non-square filter
    (2, 2, 11, 61, 13, 3, 1, 1, 1, False),  # rows of 61 columns: two chunks each
    (7, 12, 6, 5, 20, 3, 1, 1, 4, True),  # rows narrower than one vector
    (1, 20, 5, 5, 9, 3, 1, 0, 1, False),  # K = 180, past the default's limit
]


@pytest.mark.parametrize("name", UNPACKED)
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_conv2d(device, rng, name, case):
    """gemm.cl's conv_direct against the numpy twin at every precision (int8: in
    float lanes)."""
    dot4 = False if PRECISIONS[name].byte_dot else None
    op = check_conv_precision(device, rng, PRECISIONS[name], case, None, dot4, direct=True)
    assert op.direct and not op.implicit and not op.dot4


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_int8_conv_on_byte_dot_products(device, rng, case):
    """int8's direct convolution on VNNI: four taps of a filter row a step, against
    pad2d_direct's windows (a pixel's byte and the next three of its row); the same exact
    sums as the twin's, filters of 3 and 5 columns (one and three taps of padding)."""
    skip_unless_dot4(device, True)
    op = check_conv_precision(device, rng, PRECISIONS["int8"], case, None, direct=True)
    assert op.direct and op.dot4 and op.pad.windows


ROWS4_CASES = [
    # (n, c, h, w, m, k, stride, pad, groups, relu): a stride of 4 along rows
    (2, 3, 31, 29, 9, 11, 4, 2, 1, True),  # AlexNet's conv1, small: 12 taps a filter row
    (3, 2, 13, 23, 10, (3, 5), (2, 4), (1, 2), 1, False),  # 8 taps, three of them padding
    (2, 4, 9, 21, 16, 4, 4, 0, 2, True),  # groups; four taps, none padding
    (1, 1, 7, 70, 5, (1, 6), (1, 4), 0, 1, True),  # 17 outputs a row: two chunks
]


@pytest.mark.parametrize("case", ROWS4_CASES)
def test_int8_conv_with_a_stride_of_four_reads_rows_as_ints(device, rng, case):
    """int8 on VNNI with a stride of 4 along rows: the direct kernel reads pad2d_direct's
    bytes four at a time, an int holding four taps of a filter row for one output
    pixel, no panel gathered; the same exact sums as the twin's."""
    skip_unless_dot4(device, True)
    op = check_conv_precision(device, rng, PRECISIONS["int8"], case, None)
    assert op.direct and op.dot4 and op.rows4 and op.pad.row_ints


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


@pytest.mark.parametrize(
    ("implicit", "dot4", "direct"),
    [
        (True, True, False),
        (True, False, False),
        (False, False, False),
        (None, False, True),
        (None, True, True),
    ],
)
def test_int8_conv_sums_past_one_chunk_exactly(device, rng, implicit, dot4, direct):
    """K = 64 * 25 = 1600 > 512: the int8 GEMM flushes its float partial sums four
    times. Row 0 is the worst case, every product 127 * 255, a sum of 51.8M (past
    2^24, where a float would start dropping integers); with dot4, 1600 products of
    127 * 255 in an int lane, less the offset correction (direct: 640 steps of four
    taps, three of each five-tap row's eight padding)."""
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
    assert (op.dot4, op.direct) == (dot4, direct)
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


def test_dot4_only_for_int8_where_the_device_has_it(device, rng, monkeypatch):
    wt = rng.standard_normal((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="dot4 needs an implicit or direct int8 convolution"):
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


# -- a mixture's grouped experts (quantised: the implicit GEMM; float ones run Winograd) --

GROUPED_CASES = [
    # (images per expert, c, h, w, m, k, pad): two padding images follow the experts'
    ([2, 0, 3], 5, 7, 6, 9, 3, 1),
    ([1, 1, 1, 1], 32, 13, 13, 40, 3, 1),  # fashion-moe's conv2
    ([0, 4], 3, 5, 9, 13, (3, 5), (1, 2)),
]


def check_grouped_conv(device, p, case, dot4=None, store=None, seed=0):
    """A grouped Conv2d at precision p against, image by image, the twin of its
    expert's own layer (its filters, weight scales and input range); the padding
    images' outputs keep what they held. Returns the launcher."""
    counts, c, h, w, m, k, pad = case
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    skip_unless_panel_fits(device, c * kh * kw)
    rng = np.random.default_rng(seed)
    e, n = len(counts), sum(counts)
    x = rng.standard_normal((n + 2, c, h, w), np.float32)
    wt = rng.standard_normal((e, m, c, kh, kw), np.float32)
    b = rng.standard_normal((e, m), np.float32)
    ranges = [(-1.0 - 0.5 * j, 1.5 + 0.25 * j) for j in range(e)]  # some inputs saturate
    seg, expert_of = segment_table(device, counts)
    op = ops.Conv2d(
        device,
        (c, h, w),
        wt,
        b,
        (1, 1),
        (ph, pw),
        relu=True,
        precision=p,
        input_range=ranges,
        dot4=dot4,
        store=store,
        key="conv",
        segments=seg,
    )
    oh, ow = op.out_shape[1:]
    y = device.alloc(4 * m * (n + 2) * oh * ow)
    device.write(y, np.full((m, n + 2, oh, ow), 7.0, np.float32))
    op(n + 2, device.upload(to_cnhw(x)), y, device.alloc(op.scratch_bytes(n + 2)))
    got = device.read(y, (m, n + 2, oh, ow)).transpose(1, 0, 2, 3)
    for r in range(n):
        ex = expert_of[r]
        geometry = (1, 1), (ph, pw), 1, True, ranges[ex]
        want, scale_of = conv_twin(p, x[r : r + 1], wt[ex], b[ex], *geometry, op.high_plane)
        assert_dequantized_close(got[r : r + 1], want, scale_of)
    assert (got[n:] == 7.0).all()
    return op


@pytest.mark.parametrize("name,dot4", [("int8", None), ("int8", False), ("int16", None)])
@pytest.mark.parametrize("case", GROUPED_CASES)
def test_grouped_quantised_conv(device, name, dot4, case):
    """Images sorted by expert, each quantised with its expert's input range and
    convolved with its filters in one launch (int8: on VNNI where the device has it,
    and in float lanes); panels straddling two experts run once for each."""
    op = check_grouped_conv(device, PRECISIONS[name], case, dot4)
    assert op.dot4 == (device.dot4 and name == "int8" and dot4 is None)
    assert op.implicit and not op.direct


def test_grouped_int16_and_int8_share_one_store(device):
    """One upload of the experts' planes, in DOT4's layout where int8 runs it."""
    store = ops.PlaneStore()
    case = GROUPED_CASES[0]
    a16 = check_grouped_conv(device, PRECISIONS["int16"], case, store=store, seed=3)
    a8 = check_grouped_conv(device, PRECISIONS["int8"], case, store=store, seed=3)
    assert a8.high_plane and a8.a[0] is a16.a[0] and len(store) == 1


def test_grouped_conv_refuses_groups(device, rng):
    seg, _ = segment_table(device, [1, 1])
    wt = rng.standard_normal((2, 4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="grouped experts need convolutions without groups"):
        ops.Conv2d(
            device,
            (4, 6, 6),
            wt,
            None,
            groups=2,
            precision=PRECISIONS["int8"],
            input_range=[(0, 1)] * 2,
            segments=seg,
        )


def test_only_the_direct_int8_pad_reads_images_as_they_come(device, rng):
    """`nchw` (a network's input in its own layout) is for pad2d_direct alone: the
    other paths refuse it rather than read the planes in the wrong order."""
    wt = rng.standard_normal((4, 3, 3, 3), np.float32)
    op = ops.Conv2d(device, (3, 8, 8), wt, None, padding=(1, 1))
    assert not op.reads_nchw
    x = device.upload(np.zeros((2, 3, 8, 8), np.float32))
    out, scratch = device.alloc(4 * 2 * 4 * 64), device.alloc(op.scratch_bytes(2) or 4)
    with pytest.raises(ValueError, match=r"reads \[C\]\[N\]\[H\]\[W\] input only"):
        op.launch(2, x, out, scratch, nchw=True)
