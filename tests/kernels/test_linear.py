"""The fully connected launcher (kernels/ops/linear.py: Linear) against its numpy twin:
whole rows per work-item and K split over a work-group, every precision, int8 on byte
dot products, the refusals before upload, and grouped experts."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.precision import PRECISIONS, get_precision
from tests.kernels.helpers import (
    FP32_NMSE,
    QUANTIZED,
    assert_dequantized_close,
    nmse,
    segment_table,
    skip_unless_dot4,
)


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
    weights = op.packed.nbytes if op.packed else wt.size * np.dtype(p.weight_dtype).itemsize
    assert op.weight_bytes == weights + 8 * o
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


@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("name,dot4", [("int8", None), ("int8", False), ("int16", None)])
@pytest.mark.parametrize("counts,i,o", [([3, 0, 1], 36, 10), ([1] * 9, 16, 5), ([0, 12], 132, 7)])
def test_grouped_quantised_linear(device, rng, name, dot4, counts, i, o, split):
    """Each row with its expert's weights, weight scales and input range, as that
    expert's own launcher would compute it (int8: on VNNI where the device has it, and
    in float lanes); the two padding rows keep what their output held."""
    p = PRECISIONS[name]
    n, e = sum(counts), len(counts)
    x = rng.uniform(-2, 3, (n + 2, i)).astype(np.float32)
    wt = rng.standard_normal((e, o, i), np.float32)
    b = rng.standard_normal((e, o), np.float32)
    ranges = [(-1.0 - 0.25 * j, 1.0 + 0.5 * j) for j in range(e)]  # some inputs saturate
    seg, expert_of = segment_table(device, counts)
    op = ops.Linear(device, wt, b, True, p, ranges, segments=seg, split=split, dot4=dot4)
    assert op.dot4 == (device.dot4 and name == "int8" and dot4 is None and not split)
    y = device.alloc(4 * (n + 2) * o)
    device.write(y, np.full((n + 2, o), 7.0, np.float32))
    op(n + 2, device.upload(x), y, device.alloc(op.scratch_bytes(n + 2)))
    got = device.read(y, (n + 2, o))
    for r in range(n):
        pp = p.prepare(wt[expert_of[r]], ranges[expert_of[r]])
        args = (pp.weights, pp.scale, pp.qinv, pp.qzero, p.bits)
        want = ref.linear_quantized(x[r : r + 1], *args, b[expert_of[r]], True)
        scale_of = np.abs(ref.linear_quantized(x[r : r + 1], *args)) + np.abs(b[expert_of[r]])
        assert_dequantized_close(got[r : r + 1], want, scale_of)
    assert (got[n:] == 7.0).all()


def test_grouped_experts_need_one_range_each(device, rng):
    seg, _ = segment_table(device, [1, 2])
    wt = rng.standard_normal((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="linear: 2 grouped experts need an input range"):
        ops.Linear(
            device, wt, None, precision=PRECISIONS["int8"], input_range=[(0, 1)], segments=seg
        )
    with pytest.raises(ValueError, match="grouped experts cannot run int8g"):
        ops.Linear(
            device, wt, None, precision=PRECISIONS["int8g"], input_range=[(0, 1)] * 2, segments=seg
        )


@pytest.mark.parametrize("packed,base", [("int8g", "int8"), ("int16g", "int16")])
@pytest.mark.parametrize(
    "n,i,o", [(1, 300, 33), (8, 1031, 17), (3, 9216, 9), (13, 17, 5), (2, 16, 3), (9, 8200, 12)]
)
def test_packed_rows_sum_exactly_what_plain_rows_do(device, rng, packed, base, n, i, o):
    """Grouped precision (kernels/bitgroups.py): the same integers, so the same outputs,
    bit for bit: rows of all-zero groups, narrow and full-width groups, a last partial
    group, and (8200 k) more groups than int8's float lanes may sum before a flush."""
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32) * np.float32(rng.uniform(0.01, 1, (o, 1)))
    wt[0, : min(i, 40)] = 0  # whole zero groups
    wt[1 % o, ::7] *= 50  # a few wide groups among narrow ones
    b = rng.standard_normal(o, np.float32)
    ys, ops_ = [], []
    for name, pack in ((base, None), (packed, True), (packed, None)):
        op = ops.Linear(device, wt, b, True, get_precision(name), (-1.5, 2.0), pack=pack)
        y = device.alloc(4 * n * o)
        op(n, device.upload(x), y, device.alloc(max(4, op.scratch_bytes(n))))
        ys.append(device.read(y, (n, o)))
        ops_.append(op)
    np.testing.assert_array_equal(ys[1], ys[0])
    np.testing.assert_array_equal(ys[2], ys[0])
    plain, forced, chosen = ops_
    plain_bits = 8 * np.dtype(plain.precision.weight_dtype).itemsize
    assert forced.packed is not None and forced.bits_per_weight == forced.packed.bits_per_weight
    # By default packed only where the groups shrink the rows.
    assert (chosen.packed is not None) == (forced.bits_per_weight < plain_bits)
    assert chosen.bits_per_weight == min(forced.bits_per_weight, plain_bits)
