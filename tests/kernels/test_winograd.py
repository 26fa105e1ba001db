"""Winograd convolution (kernels/ops/winograd.py) against the numpy twin: F(2x2), F(3x3)
and F(4x4) tiles for 3x3 and 5x5 filters, half-precision transformed weights, when
conv2d picks it, and the grouped experts' kernel (one launch, each image with its
expert's weights)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.ops.winograd import WinogradConv2d
from kernels.precision import PRECISIONS, get_precision
from tests.kernels.helpers import FP32_NMSE, nmse, run4d, segment_table


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


@pytest.mark.parametrize("r", [3, 5])
def test_an_image_gives_the_same_outputs_alone_and_in_a_batch(device, rng, r):
    """Bit for bit: the panel width differs between batch sizes (here 1 and 3 panels of
    16 tiles), the transforms' machine code must not."""
    x = rng.standard_normal((7, 48, 27, 27), np.float32)
    wt = rng.standard_normal((20, 48, r, r), np.float32)
    op = WinogradConv2d(device, (48, 27, 27), wt, None, (r // 2, r // 2), True)
    together = run4d(device, op, x, op.scratch_bytes(7))
    for i in (0, 3, 6):
        np.testing.assert_array_equal(
            run4d(device, op, x[i : i + 1], op.scratch_bytes(1))[0], together[i]
        )


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


# -- grouped experts: one launch, each image with its expert's weights -----------------


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
    op = ops.conv2d(
        device, (c, hw, hw), wt, b, (1, 1), pad, 1, True, get_precision(name), segments=seg
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


def test_grouped_kernels_refuse_what_they_cannot_group(device, rng):
    seg, _ = segment_table(device, [1, 1])
    with pytest.raises(ValueError, match="stride-1 ungrouped 3x3"):
        ops.conv2d(
            device,
            (3, 8, 8),
            rng.standard_normal((2, 4, 3, 5, 5), np.float32),
            None,
            (1, 1),
            (2, 2),
            1,
            False,
            get_precision("fp32"),
            segments=seg,
        )
    with pytest.raises(ValueError, match="2 grouped experts need an input range"):
        ops.Linear(
            device,
            rng.standard_normal((2, 4, 8), np.float32),
            None,
            False,
            get_precision("int8"),
            (-1.0, 1.0),
            segments=seg,
        )
