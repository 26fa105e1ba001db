"""One weight store for int16 and int8 (kernels/ops/store.py): the byte planes, and the
launchers of both precisions sharing one upload, int16 exactly as without a store and
int8 from the high plane exactly as its twin says, in either build order."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.precision import PLANES_MAX, PRECISIONS, split_planes
from tests.kernels.helpers import assert_dequantized_close, skip_unless_dot4
from tests.kernels.test_conv import CONV_CASES, check_conv_precision

INT16, INT8 = PRECISIONS["int16"], PRECISIONS["int8"]
RANGE = (-1.5, 2.0)


def test_planes_round_trip_every_int16_weight():
    q = np.arange(-PLANES_MAX, PLANES_MAX + 1)
    high, low = split_planes(q)
    assert high.dtype == low.dtype == np.int8
    np.testing.assert_array_equal(256 * high.astype(np.int32) + low, q)
    assert high.min() == -127 and high.max() == 127  # int8's symmetric range
    np.testing.assert_array_equal(high, np.floor(q / 256 + 0.5))  # rounded, halves up
    with pytest.raises(ValueError, match="byte planes"):
        split_planes(np.array([PLANES_MAX + 1]))


def test_int16_quantises_to_what_splits(rng):
    w = rng.standard_normal((5, 40), np.float32)
    q, _ = INT16.quantize_weights(w)
    assert np.abs(q).max() == PLANES_MAX
    high, low = split_planes(q)
    form = INT16.device_form(q)
    assert form.nbytes == q.nbytes
    np.testing.assert_array_equal(form, np.concatenate([high.ravel(), low.ravel()]))


def test_high_plane_weights_are_int16s_rounded(rng):
    w = rng.standard_normal((6, 33), np.float32)
    q16, s16 = INT16.quantize_weights(w)
    q8, s8 = INT8.high_plane_weights(w)
    np.testing.assert_array_equal(q8, split_planes(q16)[0])
    np.testing.assert_array_equal(s8, s16 * 256)
    np.testing.assert_allclose(q8 * s8[:, None], w, atol=float(s8.max()) * 0.51)
    with pytest.raises(ValueError, match="high plane"):
        INT16.high_plane_weights(w)


def _linear(device, wt, b, p, store=None, **kw):
    return ops.Linear(
        device, wt, b, True, precision=p, input_range=RANGE, store=store, key="fc", **kw
    )


def _run(device, op, x):
    n = len(x)
    y = device.alloc(4 * n * op.o)
    op(n, device.upload(x), y, device.alloc(max(4, op.scratch_bytes(n))))
    return device.read(y, (n, op.o))


@pytest.mark.parametrize("int8_first", [False, True])
@pytest.mark.parametrize("split", [False, True], ids=["rows", "split"])
@pytest.mark.parametrize("n,i,o", [(1, 300, 33), (8, 1031, 17), (3, 9216, 9)])
def test_linear_int16_and_int8_share_one_store(device, rng, n, i, o, split, int8_first):
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    store = ops.PlaneStore()
    order = (INT8, INT16) if int8_first else (INT16, INT8)
    built = {p.name: _linear(device, wt, b, p, store, split=split) for p in order}
    a16, a8 = built["int16"], built["int8"]
    assert a16.w is a8.w and len(store) == 1
    # Counted once, under int16, whichever was built first.
    assert a16.weight_bytes == 2 * o * i + 8 * o and a8.weight_bytes == 8 * o
    alone = _linear(device, wt, b, INT16, split=split)
    np.testing.assert_array_equal(_run(device, a16, x), _run(device, alone, x))
    assert a8.high_plane and not a16.high_plane
    pp = INT8.prepare(wt, RANGE, high_plane=True)
    args = (pp.weights, pp.scale, pp.qinv, pp.qzero, 8)
    want = ref.linear_quantized(x, *args, b, True)
    scale_of = np.abs(ref.linear_quantized(x, *args)) + np.abs(b)
    assert_dequantized_close(_run(device, a8, x), want, scale_of)


@pytest.mark.parametrize("dot4", [True, False])
def test_int8_from_the_high_plane_on_byte_dot_products(device, rng, dot4):
    """VNNI reads int8 rows as they lie: the high plane is such rows."""
    skip_unless_dot4(device, dot4)
    x = rng.standard_normal((5, 640), np.float32)
    wt, b = rng.standard_normal((13, 640), np.float32), rng.standard_normal(13, np.float32)
    store = ops.PlaneStore()
    _linear(device, wt, b, INT16, store)
    a8 = _linear(device, wt, b, INT8, store, dot4=dot4)
    assert a8.dot4 == dot4
    own = _linear(device, wt, b, INT8, ops.PlaneStore(), dot4=not dot4 and device.dot4)
    pp = INT8.prepare(wt, RANGE, high_plane=True)
    scale_of = np.abs(ref.linear_quantized(x, pp.weights, pp.scale, pp.qinv, pp.qzero, 8))
    assert_dequantized_close(_run(device, a8, x), _run(device, own, x), scale_of + np.abs(b))


# (n, c, h, w, m, k, stride, pad, groups, relu); K = c / groups * k * k
IMPLICIT_CASES = [
    CONV_CASES[1],  # stride 2, two groups of 2 channels
    CONV_CASES[3],  # stride (1, 2), 5 x 3 filters
    (2, 20, 9, 9, 12, 3, 1, 1, 1, True),  # stride 1, K = 180: past the direct kernel's
    (3, 36, 7, 8, 10, 3, 1, 1, 2, False),  # 18 channels a group: padded to 20 for DOT4
]


@pytest.mark.parametrize("dot4", [True, False])
@pytest.mark.parametrize("case", IMPLICIT_CASES)
def test_conv_int16_and_int8_share_one_store(device, case, dot4):
    """Groups get a key each. Where int8 runs DOT4 the store holds DOT4's layout: int8
    reads it as its own, int16 (and int8 in float lanes) pick its bytes (gemm.cl TAPS)."""
    skip_unless_dot4(device, dot4)
    store = ops.PlaneStore()
    # The same seed: both launchers see the same weights and inputs.
    a16 = check_conv_precision(device, np.random.default_rng(7), INT16, case, True, store=store)
    a8 = check_conv_precision(
        device, np.random.default_rng(7), INT8, case, True, dot4=dot4, store=store
    )
    assert a8.high_plane and a8.dot4 == dot4 and a16.taps == a8.taps == device.dot4
    assert [id(a) for a in a8.a] == [id(a) for a in a16.a] and len(store) == case[8]
    assert a8.weight_bytes == 8 * case[4]  # the scales and biases only


def test_first_layer_reads_the_store_directly(device):
    """Where int8 runs the direct kernel (a network's first layer) the store holds the
    float-lane GEMM's layout, which both read; DOT4 is refused there."""
    store = ops.PlaneStore()
    case = CONV_CASES[0]
    check_conv_precision(device, np.random.default_rng(8), INT16, case, True, store=store)
    a8 = check_conv_precision(device, np.random.default_rng(8), INT8, case, None, store=store)
    assert a8.direct and a8.high_plane and not a8.taps and len(store) == 1
    if device.dot4:
        with pytest.raises(ValueError, match="the float-lane GEMM's layout, not this path's"):
            check_conv_precision(
                device, np.random.default_rng(8), INT8, case, True, dot4=True, store=store
            )


def test_a_store_serves_one_device(device, rng):
    wt = rng.standard_normal((4, 32), np.float32)
    store = ops.PlaneStore()
    store.planes(device, "fc", wt, INT16)
    with pytest.raises(ValueError, match="one device"):
        store.planes(object(), "fc", wt, INT16)
