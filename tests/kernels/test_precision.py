"""The precision table (kernels/precision.py): weight and activation quantisation round
trips at int16 and int8, and unknown precisions named with the supported ones."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import reference as ref
from kernels.precision import PRECISIONS, get_precision
from tests.kernels.helpers import QUANTIZED


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


def test_unknown_precision_is_named():
    supported = "supported: fp32, fp16, int16, int8"
    with pytest.raises(ValueError, match=f"unknown precision 'fp8'; {supported}"):
        get_precision("fp8")
