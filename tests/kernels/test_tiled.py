"""The tiled GEMM family (kernels/cl/tiled.cl, kernels/ops/tiled.py) against the numpy
twins on awkward shapes (no multiple of any tile, strides, padding, batch 1 and 7), at
fp32 and fp16, with tiles of every shape the space holds, vector loads with tails and
K unrolled, and at int8 (four byte products a step, here in portable C: the exact
integer sums of the twin); its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.ops.tiled import TiledConv2d
from kernels.precision import PRECISIONS
from tests.kernels.helpers import FP32_NMSE, assert_dequantized_close, nmse, run4d
from tests.kernels.test_conv import conv_twin

FLOATS = ["fp32", "fp16"]
TILES = [
    {},  # DEFAULT_TILE
    {"mwg": 16, "nwg": 32, "kwg": 8, "mdimc": 8, "ndimc": 16},
    {"mwg": 128, "nwg": 16, "kwg": 32, "mdimc": 32, "ndimc": 8},
    {"mwg": 32, "nwg": 128, "kwg": 16, "mdimc": 16, "ndimc": 32},
    # vector loads of A (K of 27-363: tails shorter than a vector), K unrolled, no padding
    {"mwg": 32, "nwg": 32, "kwg": 16, "mdimc": 8, "ndimc": 8, "vwm": 4, "kwi": 4, "padl": 0},
    {"mwg": 64, "nwg": 16, "kwg": 8, "mdimc": 16, "ndimc": 8, "vwm": 2, "kwi": 2},
]
# A fully connected layer's B loads as vectors too.
LINEAR_TILES = [*TILES, {"mwg": 32, "nwg": 16, "kwg": 16, "mdimc": 8, "ndimc": 8, "vwn": 4},
                {"kwg": 8, "vwm": 4, "vwn": 2, "kwi": 4, "padl": 0}]  # fmt: skip
CASES = [
    # (n, c, h, w, m, k, stride, pad)
    (1, 3, 17, 19, 5, 3, 1, 1),
    (7, 4, 13, 11, 66, 3, 2, 0),
    (2, 3, 31, 29, 9, 11, 4, 2),
    (3, 6, 9, 9, 130, (5, 3), (1, 2), (2, 1)),
]


@pytest.mark.parametrize("precision", FLOATS)
@pytest.mark.parametrize("tile", TILES, ids=lambda t: "x".join(map(str, t.values())) or "default")
@pytest.mark.parametrize("case", CASES)
def test_tiled_conv(device, rng, precision, tile, case):
    n, c, h, w, m, k, stride, pad = case
    kh, kw = (k, k) if isinstance(k, int) else k
    stride = (stride, stride) if isinstance(stride, int) else stride
    pad = (pad, pad) if isinstance(pad, int) else pad
    p = PRECISIONS[precision]
    x = rng.standard_normal((n, c, h, w), np.float32)
    wt = rng.standard_normal((m, c, kh, kw), np.float32)
    b = rng.standard_normal(m, np.float32)
    params = {"algorithm": "tiled", **tile}
    op = ops.conv2d(device, (c, h, w), wt, b, stride, pad, 1, True, p, params=params)
    assert isinstance(op, TiledConv2d)
    got = run4d(device, op, x, op.scratch_bytes(n))
    want = ref.conv2d(x, p.round_trip(wt), b, stride, pad, 1, True)
    assert nmse(got, want) < FP32_NMSE


@pytest.mark.parametrize("precision", FLOATS)
@pytest.mark.parametrize(
    "tile", LINEAR_TILES, ids=lambda t: "x".join(map(str, t.values())) or "default"
)
@pytest.mark.parametrize("n,o,i", [(1, 37, 45), (7, 20, 300), (64, 130, 257)])
def test_tiled_linear(device, rng, precision, tile, n, o, i):
    p = PRECISIONS[precision]
    x = rng.standard_normal((n, i), np.float32)
    wt = rng.standard_normal((o, i), np.float32)
    b = rng.standard_normal(o, np.float32)
    op = ops.Linear(device, wt, b, True, p, params={"form": "tiled", **tile})
    y = device.alloc(4 * n * o)
    op(n, device.upload(x), y)
    assert nmse(device.read(y, (n, o)), ref.linear(x, p.round_trip(wt), b, True)) < FP32_NMSE


INT8 = PRECISIONS["int8"]
# int8's tiles: B staged four k an int (vwn 1); K of 27 to 363 taps, not whole fours.
INT8_TILES = [TILES[0], TILES[1], TILES[4], TILES[5]]


@pytest.mark.parametrize(
    "tile", INT8_TILES, ids=lambda t: "x".join(map(str, t.values())) or "default"
)
@pytest.mark.parametrize("case", CASES)
def test_tiled_conv_int8(device, rng, tile, case):
    """Inputs past the calibrated range saturate, taps in the padding are inputs of
    0.0, the rows' padding to whole fours adds nothing: the twin's integer sums."""
    n, c, h, w, m, k, stride, pad = case
    kh, kw = (k, k) if isinstance(k, int) else k
    stride = (stride, stride) if isinstance(stride, int) else stride
    pad = (pad, pad) if isinstance(pad, int) else pad
    x = rng.uniform(-2.0, 3.5, (n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c, kh, kw), np.float32)
    b = rng.standard_normal(m, np.float32)
    input_range = (-1.5, 3.0)
    params = {"algorithm": "tiled", **tile}
    op = ops.conv2d(device, (c, h, w), wt, b, stride, pad, 1, True, INT8, input_range,
                    params=params)  # fmt: skip
    assert isinstance(op, TiledConv2d) and op.gemm.int8
    got = run4d(device, op, x, op.scratch_bytes(n))
    want, scale_of = conv_twin(INT8, x, wt, b, stride, pad, 1, True, input_range)
    assert_dequantized_close(got, want, scale_of)


@pytest.mark.parametrize(
    "tile", [*INT8_TILES, {"vwm": 2}], ids=lambda t: "x".join(map(str, t.values())) or "default"
)
@pytest.mark.parametrize("n,o,i", [(1, 37, 44), (7, 20, 300), (64, 130, 256)])
def test_tiled_linear_int8(device, rng, tile, n, o, i):
    """The int8 rows read as ints, x quantised as it is staged (no quantising pass);
    row 0 the worst case, every product 127 x 255."""
    x = rng.uniform(-1.0, 3.0, (n, i)).astype(np.float32)
    x[0] = 3.0  # past the range: saturates at q = 127
    wt = rng.standard_normal((o, i), np.float32)
    wt[0] = 1.0
    b = rng.standard_normal(o, np.float32)
    input_range = (0.0, 2.0)  # zero point -128
    params = {"form": "tiled", **tile}  # (VNNI rows take no other form)
    op = ops.Linear(device, wt, b, True, INT8, input_range, dot4=False, params=params)
    assert op.effective(n)["form"] == "tiled"
    y = device.alloc(4 * n * o)
    op(n, device.upload(x), y)  # no scratch: nothing is quantised ahead
    pp = INT8.prepare(wt, input_range)
    args = (pp.weights, pp.scale, pp.qinv, pp.qzero, INT8.bits)
    want = ref.linear_quantized(x, *args, b, True)
    scale_of = np.abs(ref.linear_quantized(x, *args)) + np.abs(b)
    assert_dequantized_close(device.read(y, (n, o)), want, scale_of)


def test_refusals(device, rng):
    wt = rng.standard_normal((8, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="floating-point precisions and int8"):
        TiledConv2d(device, (4, 9, 9), wt, None, precision=PRECISIONS["int16"], input_range=(0, 1))
    with pytest.raises(ValueError, match="int8 needs the calibrated range"):
        TiledConv2d(device, (4, 9, 9), wt, None, precision=INT8)
    with pytest.raises(ValueError, match="ungrouped"):
        TiledConv2d(device, (8, 9, 9), wt, None, groups=2)
    with pytest.raises(ValueError, match="multiple of mdimc"):
        TiledConv2d(device, (4, 9, 9), wt, None, params={"mwg": 16, "mdimc": 32})
    with pytest.raises(ValueError, match="must divide kwg"):
        TiledConv2d(device, (4, 9, 9), wt, None, params={"kwg": 2, "vwm": 4})
    with pytest.raises(ValueError, match="quantise B as they stage it"):
        TiledConv2d(device, (4, 9, 9), wt, None, params={"vwn": 2})
    lin8 = ops.Linear(device, rng.standard_normal((5, 8), np.float32), None, False, INT8,
                      (-1.0, 1.0), dot4=False, params={"form": "tiled", "vwn": 2})  # fmt: skip
    with pytest.raises(ValueError, match="quantise B as they stage it"):
        lin8.effective(4)
    limit = device.cl_device.max_work_group_size
    if limit < 32 * 32:
        with pytest.raises(ValueError, match="work-group larger"):
            TiledConv2d(
                device, (4, 9, 9), wt, None, params={"mwg": 32, "nwg": 32, "mdimc": 32, "ndimc": 32}
            )
    # int16 rows (and int8 rows not of whole fours) have no tiled form: refused as a
    # candidate
    w16, int16 = rng.standard_normal((5, 8), np.float32), PRECISIONS["int16"]
    lin = ops.Linear(device, w16, None, False, int16, (-1.0, 1.0), params={"form": "tiled"})
    x = device.upload(rng.standard_normal((2, 8), np.float32))
    with pytest.raises(ValueError, match="runs rows, not tiled"):
        lin(2, x, device.alloc(40), device.alloc(lin.scratch_bytes(2)))
