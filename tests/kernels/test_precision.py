"""The precision table (kernels/precision.py): weight and activation quantisation round
trips at int16 and int8, the kernels' quantising passes rounding and clamping as the
twin does, and unknown precisions named with the supported ones."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import reference as ref
from kernels.ops.pad import ConvPad
from kernels.precision import PRECISIONS, get_precision
from tests.kernels.helpers import QUANTIZED, skip_unless_dot4


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


# (bits, DOT4, direct): pad2d's offsets q - zero, pad2d_channels' and pad2d_direct's
# bytes q + 128 (the direct kernel's windows: a pixel's own byte lowest).
PADS = [(16, False, False), (8, False, False), (8, True, False), (8, True, True)]


@pytest.mark.parametrize("bits,dot4,direct", PADS)
def test_quantising_passes_round_half_to_even_and_clamp(device, bits, dot4, direct):
    """precision.h rounds by adding 1.5 * 2^23 after clamping (PoCL's vector rint was
    slow): halves go to the even integer as numpy's rint, and values far outside the
    range (infinities too) saturate, on the vector paths (rows of 20) and the scalar."""
    skip_unless_dot4(device, dot4)
    c, n, h, w = 16, 2, 3, 20
    x = np.arange(c * n * h * w, dtype=np.float32) - 960.0  # every half at qinv 0.5
    x[:6] = [np.inf, -np.inf, 1e30, -1e30, 4.2e6, -4.2e6]
    x[-6:] = [2**22 + 1.0, -(2**22) - 1.0, 0.5, -0.5, 1.5, -2.5]
    x = np.random.default_rng(1).permutation(x).reshape(c, n, h, w)
    qinv, qzero = np.float32(0.5 if bits == 8 else 1 / 60), np.float32(3.0)
    defines = {"QBITS": bits, "DOT4": int(dot4)}
    pad = ConvPad(device, (c, h, w), (1, 1), defines, (qinv, qzero), c, c, direct=direct)
    out = device.alloc(pad.nbytes(n))
    pad(n, device.upload(x), out)
    hp, wp = h + 2, w + 2
    if not dot4:
        got = device.read(out, (c, n, hp, wp))[:, :, 1:-1, 1:-1]
    elif direct:
        got = device.read(out, (c, n, hp, wp), np.uint32)[:, :, 1:-1, 1:-1] & 255
    else:
        got = device.read(out, (n, hp, wp, c), np.uint8)[:, 1:-1, 1:-1].transpose(3, 0, 1, 2)
    want = ref.quantize(x, qinv, qzero, bits)
    want = want + 128 + int(qzero) if dot4 else want
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_unknown_precision_is_named():
    supported = "supported: fp32, fp16, int16, int8"
    with pytest.raises(ValueError, match=f"unknown precision 'fp8'; {supported}"):
        get_precision("fp8")
