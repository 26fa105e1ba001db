"""Requantisation between int8 layers (the integer pipeline, as in gemmlowp and
Tschopp's quantizer): an int8 fully connected layer feeding another writes that
layer's quantised input itself, so no float output is written and read back and no
quantising pass runs between them.

Row o's int32 sum `acc` becomes the next layer's q with integers only:

    q = clamp(((acc + bias_acc[o]) * mult[o] + 2^(shift[o] - 1)) >> shift[o]) + zero)

where mult[o] / 2^shift[o] = scale[o] / next_scale (mult in [2^30, 2^31): 31 bits of
the ratio) and bias_acc[o] = rint(bias[o] / scale[o]), the bias in the sum's units;
ReLU is max(q, zero), zero being where 0.0 lands. The rounding is half up (an
arithmetic shift). Against dequantising to float and quantising again, q may differ by
one step where the float value lies within about 2^-31 of a rounding edge or where the
bias rounds; the accuracy tests measure it. `kernels/reference.py`'s `requantize` is
the numpy twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT32 = np.iinfo(np.int32)
MAX_SHIFT = 62  # beyond, the product of an int32 sum and mult rounds to 0 anyway


@dataclass(frozen=True)
class Requant:
    """Per producer row: mult, shift, bias_acc (int32 each); per expert, the next
    layer's zero point (int32)."""

    mult: np.ndarray
    shift: np.ndarray
    bias_acc: np.ndarray
    zero: np.ndarray


def requant_params(
    scale: np.ndarray, bias: np.ndarray, next_scale: np.ndarray, next_zero: np.ndarray
) -> Requant:
    """`scale`, `bias`: the producer's rows (E * O of them for grouped experts, expert by
    expert); `next_scale`, `next_zero`: the next layer's input scale and zero point,
    one per expert (1 for a plain network)."""
    experts = len(np.atleast_1d(next_scale))
    per_row = np.repeat(np.atleast_1d(next_scale).astype(np.float64), len(scale) // experts)
    ratio = scale.astype(np.float64) / per_row
    frac, exp = np.frexp(ratio)  # ratio = frac * 2^exp, frac in [0.5, 1)
    mult = np.rint(frac * 2.0**31).astype(np.int64)
    carry = mult == 2**31  # frac rounded up to 1
    mult[carry] //= 2
    exp = exp + carry
    shift = 31 - exp
    tiny = (shift > MAX_SHIFT) | (ratio == 0)
    mult[tiny], shift[tiny] = 0, 1
    shift = np.clip(shift, 1, MAX_SHIFT)
    safe = np.where(scale != 0, scale, 1).astype(np.float64)
    bias_acc = np.clip(np.rint(bias.astype(np.float64) / safe), INT32.min, INT32.max)
    return Requant(
        mult.astype(np.int32),
        shift.astype(np.int32),
        bias_acc.astype(np.int32),
        np.atleast_1d(np.asarray(next_zero)).astype(np.int32),
    )
