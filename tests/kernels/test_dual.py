"""Dual-module inference (kernels/ops/dual.py, linear.cl's SKIP) against the plain
layer and the numpy twin: skipped outputs are 0, the rest bit for bit the plain
layer's, at every precision, in both kernel forms, grouped too; the little module
against its twins; the counts the bytes-read figures come from."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.ops import dual
from kernels.ops.dual import little_weights
from kernels.precision import PRECISIONS, get_precision
from tests.kernels.helpers import UNPACKED, nmse, segment_table, skip_unless_dot4

RANGE = (-1.5, 2.0)


def _plain_and_skipped(device, op, x, estimate, threshold, n):
    """The layer's output without and with skipping, and the statistics. The little
    module is made to estimate `estimate` exactly: A the identity (stored as the
    layer's weights, scale 1), z the estimates."""
    o = op.o
    eye = np.eye(o, dtype=np.float32)
    a = eye.astype(op.precision.weight_dtype) if op.segments is None else eye
    if op.segments is not None:  # each expert's A and vectors
        a = np.concatenate([eye] * op.experts).astype(op.precision.weight_dtype)
    a = op.precision.device_form(a)
    rows = op.experts * o
    xb = device.upload(x)
    scratch = device.alloc(max(op.scratch_bytes(n), 4))
    plain, skipped = device.alloc(4 * n * o), device.alloc(4 * n * o)
    op(n, xb, plain, scratch)
    stats = device.upload(np.zeros(3, np.int32))
    little = [
        device.upload(np.ascontiguousarray(estimate, np.float32)),
        device.upload(a),
        device.upload(np.ones(rows, np.float32)),
        device.upload(np.zeros(rows, np.float32)),
        device.upload(np.asarray(threshold, np.float32).reshape(-1)),
        stats,
    ]
    op.launch(n, xb, skipped, scratch, tuple(little), rank=o)
    counts = device.read(stats, (3,), np.int32)
    return device.read(plain, (n, o)), device.read(skipped, (n, o)), counts


def _tile_reads(need: np.ndarray, rb: int) -> int:
    """Rows read once per tile of rb images that has an image needing them."""
    n = len(need)
    return sum(int(need[b : b + rb].any(axis=0).sum()) for b in range(0, n, rb))


@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("name", UNPACKED)
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
    rb = op._tile(n)[2]
    assert stats.tolist() == [_tile_reads(need, rb), n, int(need.sum())]


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
        op.launch(1, buf, buf, None, (buf,) * 6, rank=4)


def _little(rng, i, o, r, experts=None):
    lead = () if experts is None else (experts,)
    return (
        rng.standard_normal((*lead, r, i), np.float32) / np.sqrt(i),
        rng.standard_normal((*lead, r), np.float32),
        rng.standard_normal((*lead, o, r), np.float32) / np.sqrt(r),
        rng.standard_normal((*lead, o), np.float32),
    )


def _twin(x, project, shift, weight, bias, p):
    """(z, estimates) in numpy, from the weights as DualLinear stores them."""
    pw, ps = little_weights(project, p)
    aw, a_s = little_weights(weight, p)
    z = x.astype(np.float64) @ pw.astype(np.float64).T * ps + shift
    return z, ref.little_estimate(x, pw, ps, shift, aw, a_s, bias)


@pytest.mark.parametrize("name", UNPACKED)
@pytest.mark.parametrize("n,i,o,r", [(1, 200, 40, 8), (3, 37, 9, 5), (9, 1031, 70, 33)])
def test_dual_linear_against_its_twins(device, rng, name, n, i, o, r):
    """The whole layer in both forms: the little module's estimates against little.cl's
    twin, the output against the plain layer masked by those estimates, and the
    statistics. One launch and two decide alike: the same arithmetic, the same rows."""
    p = PRECISIONS[name]
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    big = ops.Linear(device, wt, b, True, precision=p, input_range=RANGE)
    little = _little(rng, i, o, r)
    z, estimate = _twin(x, *little, p)
    # float32 sums against float64 ones: an estimate within a hair of the threshold
    # could land either side; there are none here.
    assert (np.abs(estimate - 0.25) > 1e-4 * np.abs(estimate).max()).all()
    xb, plain = device.upload(x), device.alloc(4 * n * o)
    scratch = device.alloc(max(big.scratch_bytes(n), 4))
    big(n, xb, plain, scratch)
    plain = device.read(plain, (n, o))
    for form in dual.FORMS:
        op = ops.DualLinear(big, *little, np.array([0.25]), form=form)
        y = device.alloc(4 * n * o)
        op(n, xb, y, scratch)
        if form != "fused":
            assert nmse(device.read(op.projections(n), (n, r)), z) < 1e-10
        got = device.read(y, (n, o))
        np.testing.assert_array_equal(got, ref.skip_insensitive(plain, estimate, 0.25))
        stats = op.take_stats()
        assert (stats.images, stats.computed) == (n, int((estimate >= 0.25).sum()))
        assert stats.row_bytes == i * np.dtype(p.weight_dtype).itemsize
        assert op.take_stats().images == 0  # taken: counting starts again
        assert op.weight_bytes == big.weight_bytes + op.little_bytes
        # dual_linear reads A (fused: P too) transposed, rows padded to 16
        r16, o16 = -(-r // 16) * 16, -(-o // 16) * 16
        rp = r16 if form == "fused" else r
        oo = o if form == "skip" else o16
        itemsize = np.dtype(p.weight_dtype).itemsize
        assert op.little_bytes == itemsize * (rp * i + r * oo) + 4 * (2 * rp + 2 * oo + 1)


@pytest.mark.parametrize("form", dual.FORMS)
@pytest.mark.parametrize("name", UNPACKED)
@pytest.mark.parametrize("n,i,o,r", [(1, 300, 33, 8), (8, 1031, 17, 5), (3, 9000, 70, 5)])
def test_no_skip_and_all_skipped_equal_the_plain_layer(device, rng, name, n, i, o, r, form):
    """Every form: at 0% skip the plain layer exactly (dual_linear quantises the input
    itself; 9000 inputs cross int8's flush of the float lanes), at 100% skip zeros,
    which the plain layer gives too where every pre-activation is negative (a bias far
    below the sums)."""
    p = PRECISIONS[name]
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    for bias, threshold in ((rng.standard_normal(o, np.float32), -np.inf), (-1e5, np.inf)):
        b = np.full(o, bias, np.float32) if np.isscalar(bias) else bias
        big = ops.Linear(device, wt, b, True, precision=p, input_range=RANGE)
        op = ops.DualLinear(big, *_little(rng, i, o, r), np.array([threshold]), form=form)
        xb, y, plain = device.upload(x), device.alloc(4 * n * o), device.alloc(4 * n * o)
        scratch = device.alloc(max(big.scratch_bytes(n), 4))
        big(n, xb, plain, scratch)
        op(n, xb, y, scratch)
        plain = device.read(plain, (n, o))
        np.testing.assert_array_equal(device.read(y, (n, o)), plain)
        stats = op.take_stats()
        assert stats.images == n
        if threshold > 0:
            assert not plain.any() and (stats.row_reads, stats.computed) == (0, 0)
        else:
            assert stats.computed == n * o


@pytest.mark.parametrize("dot4", [True, False])
@pytest.mark.parametrize("form", ["listed", "fused"])
def test_int8_cpu_forms_on_byte_dot_products_too(device, rng, dot4, form):
    """dual_linear at int8 on VNNI (bytes q + 128, 200 inputs: three 64-byte steps and a
    tail) and on float lanes: the plain layer's integers either way."""
    skip_unless_dot4(device, dot4)
    n, i, o, r = 3, 200, 40, 8
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    p = PRECISIONS["int8"]
    big = ops.Linear(device, wt, None, True, precision=p, input_range=RANGE, dot4=dot4)
    little = _little(rng, i, o, r)
    op = ops.DualLinear(big, *little, np.array([0.25]), form=form)
    xb, y, plain = device.upload(x), device.alloc(4 * n * o), device.alloc(4 * n * o)
    big(n, xb, plain, device.alloc(big.scratch_bytes(n)))
    op(n, xb, y, None)
    estimate = _twin(x, *little, p)[1]
    want = ref.skip_insensitive(device.read(plain, (n, o)), estimate, 0.25)
    np.testing.assert_array_equal(device.read(y, (n, o)), want)


@pytest.mark.parametrize("form", dual.FORMS)
@pytest.mark.parametrize("name", UNPACKED)
def test_grouped_little_modules(device, rng, name, form):
    """Each row projected with its expert's little module and skipped against its
    expert's estimate and threshold (none skipped, some, all); padding rows are left
    alone. int16: each expert's planes found across all experts' weights."""
    counts, i, o, r = [2, 0, 3, 2], 45, 12, 4
    n, e = sum(counts), len(counts)
    p = get_precision(name)
    x = rng.standard_normal((n + 1, i), np.float32)
    seg, expert_of = segment_table(device, counts)
    wt = rng.standard_normal((e, o, i), np.float32)
    big = ops.Linear(device, wt, None, True, p, input_range=[RANGE] * e, segments=seg)
    little = _little(rng, i, o, r, experts=e)
    thresholds = np.array([-np.inf, 0.0, 0.5, np.inf], np.float32)
    op = ops.DualLinear(big, *little, thresholds, form=form)
    y, plain = device.alloc(4 * (n + 1) * o), device.alloc(4 * (n + 1) * o)
    xb = device.upload(x)
    scratch = device.alloc(max(big.scratch_bytes(n + 1), 4))
    op(n + 1, xb, y, scratch)
    big(n + 1, xb, plain, scratch)
    twins = [_twin(x[b : b + 1], *(a[expert_of[b]] for a in little), p) for b in range(n)]
    if form != "fused":
        z = np.concatenate([t[0] for t in twins])
        assert nmse(device.read(op.projections(n + 1), (n + 1, r))[:n], z) < 1e-10
    estimate = np.concatenate([t[1] for t in twins])
    threshold = thresholds[expert_of][:, None]
    want = ref.skip_insensitive(device.read(plain, (n + 1, o))[:n], estimate, threshold)
    np.testing.assert_array_equal(device.read(y, (n + 1, o))[:n], want)
    assert op.take_stats().images == n


def test_a_little_module_that_does_not_fit_is_refused(device, rng):
    big = ops.Linear(device, rng.standard_normal((40, 200), np.float32), None, relu=True)
    with pytest.raises(ValueError, match="do not fit the layer's"):
        ops.DualLinear(big, *_little(rng, 200, 41, 8), np.zeros(1))
    with pytest.raises(ValueError, match="2 thresholds for 1 experts"):
        ops.DualLinear(big, *_little(rng, 200, 40, 8), np.zeros(2))


@pytest.mark.parametrize("name", ["int8g", "int16g"])
def test_packed_rows_are_refused(device, rng, name):
    wt = rng.standard_normal((9, 64), np.float32)
    big = ops.Linear(device, wt, None, True, get_precision(name), input_range=RANGE)
    with pytest.raises(ValueError, match=f"reads plain rows; {name} packs them"):
        ops.DualLinear(big, *_little(rng, 64, 9, 4), np.array([0.25]))


def test_the_form_follows_the_layer_and_the_device(device, rng):
    """On a CPU: one launch for an expert-sized layer, dual_linear after the projection
    past FUSED_WEIGHTS (grouped: an expert's weights count), linear.cl's SKIP past
    FUSED_SIDE; SKIP on any other device."""
    cpu = device.is_cpu

    def form(o: int, i: int, experts: int = 1) -> str:
        seg = segment_table(device, [1] * experts)[0] if experts > 1 else None
        wt = rng.standard_normal((experts, o, i) if seg else (o, i), np.float32)
        big = ops.Linear(device, wt, None, True, segments=seg)
        little = _little(rng, i, o, 2, experts=experts if seg else None)
        return ops.DualLinear(big, *little, np.zeros(experts)).form

    assert form(64, 160, experts=2) == ("fused" if cpu else "skip")
    assert form(128, dual.FUSED_WEIGHTS // 128 + 16) == ("listed" if cpu else "skip")
    assert form(2, dual.FUSED_SIDE + 1) == "skip"
    with pytest.raises(ValueError, match="form 'tiled': one of skip, listed, fused"):
        ops.DualLinear(
            ops.Linear(device, np.ones((4, 8), np.float32), None, relu=True),
            *_little(rng, 8, 4, 2),
            np.zeros(1),
            form="tiled",
        )


@pytest.mark.parametrize("grouped", [False, True], ids=["one", "experts"])
@pytest.mark.parametrize("name", UNPACKED)
def test_a_pair_in_one_launch_equals_the_two_layers(device, rng, name, grouped):
    """little.cl's dual_pair (a fused layer and the fused layer it feeds, one work-item
    an image) against the same two layers launched one after the other: the same
    outputs bit for bit, the same counts; the first layer then no longer runs alone."""
    counts, i, o1, o2 = [2, 0, 3], 100, 36, 21  # 100 inputs: VNNI's 64 and a tail
    n, e = sum(counts), len(counts)
    seg = segment_table(device, counts)[0] if grouped else None
    p = PRECISIONS[name]
    lead = (e,) if grouped else ()
    ranges = [RANGE] * e if grouped else RANGE

    def layer(o: int, i: int) -> ops.DualLinear:
        wt = rng.standard_normal((*lead, o, i), np.float32)
        b = rng.standard_normal((*lead, o), np.float32)
        big = ops.Linear(device, wt, b, True, p, input_range=ranges, segments=seg)
        little = _little(rng, i, o, 5, experts=e if grouped else None)
        return ops.DualLinear(big, *little, np.full(e if grouped else 1, 0.1), form="fused")

    first, second = layer(o1, i), layer(o2, o1)
    x = device.upload(rng.standard_normal((n, i), np.float32))
    h, want, got = device.alloc(4 * n * o1), device.alloc(4 * n * o2), device.alloc(4 * n * o2)
    first(n, x, h, None)
    second(n, h, want, None)
    apart = [first.take_stats(), second.take_stats()]
    assert first.runs_at(n) and second.follows(first) and not first.runs_at(n)
    second(n, x, got, None)
    np.testing.assert_array_equal(device.read(got, (n, o2)), device.read(want, (n, o2)))
    assert [first.take_stats(), second.take_stats()] == apart
    assert 0 < apart[1].computed < n * o2  # some skipped, some not


def test_only_fused_layers_that_feed_each_other_pair(device, rng):
    def layer(o: int, i: int, form: str) -> ops.DualLinear:
        big = ops.Linear(device, rng.standard_normal((o, i), np.float32), None, relu=True)
        return ops.DualLinear(big, *_little(rng, i, o, 4), np.zeros(1), form=form)

    assert not layer(8, 12, "fused").follows(layer(12, 16, "listed"))
    assert not layer(8, 10, "fused").follows(layer(12, 16, "fused"))  # 12 outputs, 10 inputs
    first = layer(12, 16, "fused")
    second = layer(8, 12, "fused")
    assert first.runs_at(1) and second.follows(first) and not first.runs_at(1)
    # a third layer after a pair: the second runs inside the pair, so not with the third
    assert not layer(6, 8, "fused").follows(second) and not second.paired
