"""Grouped-precision weights (DPRed, Delmas et al. 2018): the packing and its checks.

Quantised weights [M][K] are cut along K into groups of 16; each group is stored at
the two's-complement width its largest magnitude needs, from 1 bit (all zeros or -1)
up to the precision's own. A group of width w is w 16-bit words, bit-sliced: word b
holds bit b of each of the group's 16 weights (weight j in bit j), so a kernel decodes
a group with 16-lane vector operations, one shift, mask and or per bit (linear.cl's
PACKED); unsliced, every weight would start at its own bit offset. A row's groups
follow each other, `offsets` says where each row starts (in words), and the widths
travel as nibbles, w - 1 each. The integers are the quantised ones, unchanged, so a
kernel that decodes them sums exactly what int8 / int16 would.

This module is the numpy encoder and decoder (the twins of the decoding kernel, and
the figures of bits per weight); `check` refuses a packing whose widths, offsets or
stream disagree with its shape before anything decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP = 16  # weights per group: one 16-lane vector, one bit of each in a word
LANES = np.arange(GROUP, dtype=np.int64)


@dataclass(frozen=True)
class Packed:
    """One weight matrix, packed."""

    shape: tuple[int, int]  # M, K
    bits: int  # the precision's: no group is wider
    widths: np.ndarray  # uint8 [M][ceil(K / 16)], 1..bits
    offsets: np.ndarray  # int64 [M + 1]: each row's first word in `stream`
    stream: np.ndarray  # uint16 words

    @property
    def nbytes(self) -> int:
        """Bytes on the device: the stream, the widths as nibbles, the offsets as uint32."""
        return 2 * self.stream.size + self.nibbles().nbytes + 4 * self.offsets.size

    @property
    def bits_per_weight(self) -> float:
        """Everything the device holds, per weight (int8 itself: 8)."""
        m, k = self.shape
        return 8 * self.nbytes / max(1, m * k)

    def nibbles(self) -> np.ndarray:
        """The widths as the kernel reads them: uint8 [M][ceil(groups / 2)], group 2i
        in the low nibble of byte i, w - 1 each."""
        w = self.widths.astype(np.uint8) - 1
        if w.shape[1] % 2:
            w = np.pad(w, ((0, 0), (0, 1)))
        return np.ascontiguousarray(w[:, 0::2] | (w[:, 1::2] << 4))


def widths_needed(q: np.ndarray) -> np.ndarray:
    """Two's-complement bits each value needs, at least 1: 1 for 0 and -1, 2 for 1 and
    -2, 3 for 2, 3, -3 and -4, ..."""
    v = np.asarray(q).astype(np.int64)
    magnitude = np.where(v < 0, -v - 1, v)  # -2^(w-1) .. 2^(w-1) - 1 fit w bits
    # frexp: magnitude = f * 2^e with f in [0.5, 1), so e is its bit length (0 for 0).
    return (np.frexp(magnitude.astype(np.float64))[1] + 1).astype(np.uint8)


def entropy_bits(q: np.ndarray) -> float:
    """The empirical entropy of the integers, in bits per weight: no code that stores
    each weight on its own (these groups, Huffman, arithmetic coding with one table)
    can hold the same integers in fewer bits on average, whatever its headers."""
    v = np.asarray(q).astype(np.int64).ravel()
    if v.size == 0:
        return 0.0
    counts = np.bincount(v - v.min())
    p = counts[counts > 0] / v.size
    return float(-(p * np.log2(p)).sum())


def _groups(q: np.ndarray) -> np.ndarray:
    """[M][K] -> [M][ceil(K / 16)][16], the last group padded with zeros."""
    m, k = q.shape
    return np.pad(q, ((0, 0), (0, -k % GROUP))).reshape(m, -1, GROUP)


def _starts(widths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each group's first word: its row's start plus the widths before it."""
    w = widths.astype(np.int64)
    return offsets[:-1, None] + np.cumsum(w, axis=1) - w


def encode(q: np.ndarray, bits: int) -> Packed:
    """Pack integer weights [M][K] (each within the precision's `bits`)."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"weights must be [M][K], got shape {q.shape}")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"weights outside {bits}-bit range [{lo}, {hi}]")
    g = _groups(q.astype(np.int8 if bits <= 8 else np.int16))
    # A group's width is that of its value farthest from zero (one of its min and max).
    extremes = np.stack([g.min(axis=2, initial=0), g.max(axis=2, initial=0)])
    widths = widths_needed(extremes).max(axis=0).astype(np.uint8)
    offsets = np.concatenate([[0], np.cumsum(widths.sum(axis=1, dtype=np.int64))])
    # Word b of every group at once: bit b of its 16 weights, weight j in bit j.
    words = np.stack(
        [
            np.packbits(((g >> b) & 1).astype(np.uint8), axis=2, bitorder="little").view("<u2")[
                ..., 0
            ]
            for b in range(bits)
        ],
        axis=2,
    )  # [M][groups][bits]
    stream = words[np.arange(bits) < widths[..., None]]  # row by row, group, bit
    return Packed((q.shape[0], q.shape[1]), bits, widths, offsets.astype(np.int64), stream)


def decode(p: Packed) -> np.ndarray:
    """The integer weights [M][K] back (int64), after `check`."""
    check(p)
    m, k = p.shape
    starts = _starts(p.widths, p.offsets)
    out = np.zeros((m, p.widths.shape[1], GROUP), np.int64)
    for b in range(int(p.widths.max(initial=0))):
        rows, cols = np.nonzero(p.widths > b)
        word = p.stream[starts[rows, cols] + b].astype(np.int64)
        out[rows, cols] |= ((word[:, None] >> LANES) & 1) << b
    w = p.widths.astype(np.int64)[:, :, None]
    out = np.where(out >= 1 << (w - 1), out - (1 << w), out)  # sign of each width
    return out.reshape(m, -1)[:, :k]


def check(p: Packed, where: str = "packed weights") -> None:
    """A ValueError naming `where` and what disagrees, before any decoding."""
    m, k = p.shape
    groups = -(-k // GROUP)
    if p.widths.shape != (m, groups):
        raise ValueError(
            f"{where}: widths {p.widths.shape} for weights {p.shape} in groups of {GROUP}"
        )
    if p.widths.size and (int(p.widths.max()) > p.bits or int(p.widths.min()) < 1):
        bad = int(p.widths.max()) if int(p.widths.max()) > p.bits else int(p.widths.min())
        raise ValueError(f"{where}: a group of width {bad} in a {p.bits}-bit precision")
    want = np.concatenate([[0], np.cumsum(p.widths.sum(axis=1, dtype=np.int64))])
    if p.offsets.shape != (m + 1,) or not np.array_equal(p.offsets, want):
        raise ValueError(f"{where}: row offsets disagree with the group widths")
    if p.stream.size != int(want[-1]):
        raise ValueError(
            f"{where}: stream of {p.stream.size} words, the widths need {int(want[-1])} "
            "(truncated?)"
        )
