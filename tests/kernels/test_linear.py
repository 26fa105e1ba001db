"""The fully connected launcher (kernels/ops/linear.py: Linear) against its numpy twin:
whole rows per work-item and K split over a work-group, every precision, int8 on byte
dot products, the refusals before upload, and grouped experts."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.precision import PRECISIONS, get_precision
from kernels.requant import requant_params
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


@pytest.mark.parametrize("ro,rb,kb", [(1, 8, 512), (2, 3, 1024), (4, 8, 2048), (8, 5, 64)])
def test_int8_linear_in_blocks_of_k(device, rng, ro, rb, kb):
    """VNNI rows with k in blocks (KB): blocks that do not divide the 64-byte steps'
    span (2944 of 3004 k), the scalar tail, passes of one or two rows, RO cut at O
    and RB at N; the same exact sums as the twin."""
    skip_unless_dot4(device, True)
    p = PRECISIONS["int8"]
    n, i, o = 11, 3004, 13
    x = rng.uniform(-1, 3, (n, i)).astype(np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    params = {"form": "rows", "ro": ro, "rb": rb, "kb": kb}
    op = ops.Linear(device, wt, b, True, precision=p, input_range=(-1.0, 3.0), params=params)
    assert op.effective(n) == params
    y = device.alloc(4 * n * o)
    op(n, device.upload(x), y, device.alloc(op.scratch_bytes(n)))
    pp = p.prepare(wt, (-1.0, 3.0))
    args = (pp.weights, pp.scale, pp.qinv, pp.qzero, p.bits)
    want = ref.linear_quantized(x, *args, b, True)
    scale_of = np.abs(ref.linear_quantized(x, *args)) + np.abs(b)
    assert_dequantized_close(device.read(y, (n, o)), want, scale_of)
    float_rows = ops.Linear(device, wt, b, precision=p, input_range=(-1.0, 3.0), dot4=False)
    float_rows.params = params  # as the tuner builds a candidate
    with pytest.raises(ValueError, match="k blocks"):
        float_rows(n, device.upload(x), y, device.alloc(float_rows.scratch_bytes(n)))


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
    if not split:  # one image a work-item, four rows (VNNI's 8-row blocks are ungrouped)
        assert op.effective(n + 2)["ro"] == 4 and op.effective(n + 2)["rb"] == 1
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


# -- the integer pipeline: an int8 layer writing the next int8 layer's input --------------


@pytest.mark.parametrize("ratio", [3e-3, 0.7, 1.0, 2.5e-12, 0.0])
def test_requant_multiplier_and_shift(ratio):
    """mult / 2^shift is the ratio to 31 bits (mult in [2^30, 2^31)); ratios too small
    for an int32 sum to reach one step give 0."""
    r = requant_params(np.float32([ratio]), np.float32([0.5]), np.float64([1.0]), np.int32([0]))
    if ratio < 2**-32:  # |sum| < 2^31: below half a step whatever the sum
        assert r.mult[0] == 0
        return
    got = float(r.mult[0]) / 2.0 ** float(r.shift[0])
    assert got == pytest.approx(float(np.float32(ratio)), rel=2**-30)
    assert 2**30 <= int(r.mult[0]) < 2**31


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "grouped"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dot4", [None, False])
@pytest.mark.parametrize("next_dot4", [None, False])
def test_requantising_epilogue_matches_its_twin(device, rng, grouped, relu, dot4, next_dot4):
    """The producer's int32 sums requantised with integers only (kernels/requant.py),
    written as the consumer reads its input (bytes on VNNI, float offsets otherwise),
    exactly as the numpy twin; the consumer then runs on them without quantising."""
    p = PRECISIONS["int8"]
    counts = [3, 0, 2] if grouped else [5]
    n, e, i, o, o2 = sum(counts), len(counts), 72, 36, 12
    seg, expert_of = segment_table(device, counts) if grouped else (None, np.zeros(n, int))
    x = rng.uniform(-1, 2, (n, i)).astype(np.float32)
    w1 = rng.standard_normal((e, o, i), np.float32)
    w2 = rng.standard_normal((e, o2, o), np.float32)
    b1 = rng.standard_normal((e, o), np.float32)
    r1 = [(-1.0, 2.0)] * e if grouped else (-1.0, 2.0)
    r2 = [(-0.5 - j, 6.0 + j) for j in range(e)] if grouped else (-0.5, 6.0)
    shape = (lambda w: w) if grouped else (lambda w: w[0])
    a = ops.Linear(device, shape(w1), shape(b1), relu, p, r1, seg, dot4=dot4)
    b = ops.Linear(device, shape(w2), None, False, p, r2, seg, dot4=next_dot4)
    assert a.feeds(b)
    requant = a.requantizer(b)
    assert requant[0] == (1 if b.dot4 else 2)
    y = device.alloc(4 * n * o)
    a.launch(n, device.upload(x), y, device.alloc(a.scratch_bytes(n)), requant=requant)
    got = device.read(y, (n, o), np.uint8 if b.dot4 else np.float32)
    z = device.alloc(4 * n * o2)
    b.launch(n, y, z, quantised_input=True)
    for row in range(n):
        ex = expert_of[row]
        pa = p.prepare(w1[ex], r1[ex] if grouped else r1)
        pb = p.prepare(w2[ex], r2[ex] if grouped else r2)
        acc = ref.quantize(x[row : row + 1], pa.qinv, pa.qzero, 8) @ pa.weights.astype(np.int64).T
        rq = requant_params(pa.scale, b1[ex], np.float64([1 / pb.qinv]), np.int32([pb.qzero]))
        q = ref.requantize(acc, rq.mult, rq.shift, rq.bias_acc, int(pb.qzero), relu)
        want = q + 128 if b.dot4 else q - int(pb.qzero)
        np.testing.assert_array_equal(got[row : row + 1], want)
        # The float pipeline's input to the consumer, within one step of it.
        floats = ref.dequantize(acc, pa.scale, b1[ex], relu, axis=1)
        assert np.abs(q - int(pb.qzero) - ref.quantize(floats, pb.qinv, pb.qzero, 8)).max() <= 1
        acc2 = (q - int(pb.qzero)) @ pb.weights.astype(np.int64).T
        want2 = ref.dequantize(acc2, pb.scale, None, False, axis=1)
        assert_dequantized_close(device.read(z, (n, o2))[row : row + 1], want2, np.abs(want2))
