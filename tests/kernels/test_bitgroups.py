"""Grouped-precision weight packing (kernels/bitgroups.py, DPRed): exact round trips on
awkward lengths, all-zero groups and the extreme values, the widths, and every
disagreement between widths, offsets and stream refused before decoding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kernels.bitgroups import Packed, check, decode, encode, entropy_bits, widths_needed


def test_widths_needed():
    values = np.array([0, -1, 1, -2, 2, 3, -4, 4, 63, -64, 64, 127, -127, -128, 32767, -32768])
    want = [1, 1, 2, 2, 3, 3, 3, 4, 7, 7, 8, 8, 8, 8, 16, 16]
    assert widths_needed(values).tolist() == want


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("k", [1, 7, 15, 16, 17, 45, 100])
def test_round_trip(rng, bits, k):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = rng.integers(lo, hi + 1, (6, k))
    q[1] = 0  # a row of all-zero groups
    q[2] = rng.integers(-3, 4, k)  # narrow groups
    q[3, ::2], q[3, 1::2] = hi, lo  # the extremes
    q[4, : min(k, 16)] = 0  # one all-zero group in a full row
    q[5, : min(k, 16)] = -1  # one all -1 group
    p = encode(q, bits)
    np.testing.assert_array_equal(decode(p), q)
    groups = -(-k // 16)
    assert p.widths[1].tolist() == [1] * groups and p.offsets[2] - p.offsets[1] == groups
    assert p.widths[3].min() == bits and p.widths[4, 0] == p.widths[5, 0] == 1


def test_entropy_bits_bounds_the_packing(rng):
    """The entropy of the integers: 8 bits for all 256 values equally often, 0 for one
    value, 1 for two; no packing of Gaussian int8 weights goes below it."""
    assert entropy_bits(np.arange(-128, 128).repeat(3)) == pytest.approx(8.0)
    assert entropy_bits(np.full(50, -7)) == 0.0 and entropy_bits(np.array([], int)) == 0.0
    assert entropy_bits(np.array([3, -3, 3, -3])) == pytest.approx(1.0)
    w = rng.standard_normal((64, 4096))
    q = np.rint(w / np.abs(w).max(axis=1, keepdims=True) * 127).astype(np.int8)
    bound = entropy_bits(q)
    assert 6.5 < bound < 7.5 and encode(q, 8).bits_per_weight > bound


def test_bit_slicing_and_bytes():
    """Word b of a group holds bit b of its 16 weights; the widths are nibbles."""
    q = np.zeros((2, 20), np.int64)
    q[0, :16] = [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -4]  # 4 bits: 0101 ... 1100
    p = encode(q, 8)
    assert p.widths.tolist() == [[4, 1], [1, 1]] and p.offsets.tolist() == [0, 5, 7]
    assert p.stream[:4].tolist() == [1, 0, 1 | 1 << 15, 1 << 15]
    assert p.nibbles().tolist() == [[3], [0]]
    assert p.nbytes == 2 * 7 + 2 + 4 * 3 and p.bits_per_weight == 8 * p.nbytes / 40


def test_encode_refuses():
    with pytest.raises(ValueError, match=r"outside 8-bit range \[-128, 127\]"):
        encode(np.array([[128]]), 8)
    with pytest.raises(ValueError, match=r"must be \[M\]\[K\]"):
        encode(np.zeros(4, np.int64), 8)


def _packed(rng) -> Packed:
    return encode(rng.integers(-100, 101, (3, 40)), 8)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: replace(p, widths=np.full_like(p.widths, 9)), "a group of width 9 in a 8-bit"),
        (lambda p: replace(p, widths=np.zeros_like(p.widths)), "a group of width 0 in a 8-bit"),
        (lambda p: replace(p, widths=p.widths[:, :-1]), r"widths \(3, 2\) for weights \(3, 40\)"),
        (lambda p: replace(p, offsets=p.offsets + 1), "row offsets disagree"),
        (
            lambda p: replace(p, stream=p.stream[:-1]),
            r"stream of \d+ words, the widths need \d+ \(truncated\?\)",
        ),
    ],
)
def test_disagreements_are_refused_before_decoding(rng, change, message):
    with pytest.raises(ValueError, match=f"fc6: {message}"):
        check(change(_packed(rng)), "fc6")
    with pytest.raises(ValueError):
        decode(change(_packed(rng)))
