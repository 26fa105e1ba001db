"""Grouped-precision weights (DPRed, Delmas et al. 2018): the packing and its checks.

Quantised weights [M][K] are cut along K into groups of G (a multiple of 8); each
group is stored at the width its largest magnitude needs, in two's complement, from 0
bits (all zeros) up to the precision's own. A group of width w takes exactly G * w / 8
bytes, so every group starts on a byte: a row's groups follow each other, and
`offsets` gives where each row starts. The integers are the quantised ones, unchanged,
so a kernel that decodes them sums exactly what int8 / int16 would.

This module is the numpy encoder and decoder (the twins of a decoding kernel, and the
figures of bits per weight); `check` refuses a packing whose widths, lengths or stream
disagree with its shape before anything decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP = 16  # weights per group: 2 bytes per bit of width


@dataclass(frozen=True)
class Packed:
    """One weight matrix, packed."""

    shape: tuple[int, int]  # M, K
    bits: int  # the precision's: no group is wider
    group: int  # G
    widths: np.ndarray  # uint8 [M][ceil(K / G)]
    offsets: np.ndarray  # int64 [M + 1]: each row's first byte in `stream`
    stream: np.ndarray  # uint8

    @property
    def header_bits(self) -> int:
        """Bits a group's width takes (0..bits): 4 for int8, 5 for int16."""
        return int(self.bits).bit_length()

    @property
    def bits_per_weight(self) -> float:
        """Stream and widths, per weight (int8 itself: 8)."""
        m, k = self.shape
        total = 8 * self.stream.size + self.header_bits * self.widths.size
        return total / max(1, m * k)


def widths_needed(q: np.ndarray) -> np.ndarray:
    """Two's-complement bits each value needs: 0 for 0, 1 for -1, 2 for 1 and -2, ..."""
    v = q.astype(np.int64)
    magnitude = np.where(v < 0, -v - 1, v)  # -2^(w-1) .. 2^(w-1) - 1 fit w bits
    width = np.zeros(v.shape, np.uint8)
    nonzero = v != 0
    width[nonzero] = (np.floor(np.log2(np.maximum(magnitude[nonzero], 1))) + 2).astype(np.uint8)
    width[nonzero & (magnitude == 0)] = 1  # -1
    return width


def _groups(q: np.ndarray, group: int) -> np.ndarray:
    """[M][K] -> [M][ceil(K / G)][G], the last group padded with zeros."""
    m, k = q.shape
    pad = -k % group
    return np.pad(q.astype(np.int64), ((0, 0), (0, pad))).reshape(m, -1, group)


def encode(q: np.ndarray, bits: int, group: int = GROUP) -> Packed:
    """Pack integer weights [M][K] (each within the precision's `bits`)."""
    if group % 8 or group <= 0:
        raise ValueError(f"group must be a positive multiple of 8, got {group}")
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"weights must be [M][K], got shape {q.shape}")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"weights outside {bits}-bit range [{lo}, {hi}]")
    g = _groups(q, group)
    widths = (
        widths_needed(g).max(axis=2).astype(np.uint8) if g.size else np.zeros(g.shape[:2], np.uint8)
    )
    nbytes = widths.astype(np.int64) * (group // 8)
    row_bytes = nbytes.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(row_bytes)]).astype(np.int64)
    starts = offsets[:-1, None] + np.cumsum(nbytes, axis=1) - nbytes  # each group's byte
    stream = np.zeros(int(offsets[-1]), np.uint8)
    for w in np.unique(widths):
        if w == 0:
            continue
        rows, cols = np.nonzero(widths == w)
        values = g[rows, cols] & ((1 << int(w)) - 1)  # [n][G] two's complement, w bits
        bitplanes = (values[:, :, None] >> np.arange(int(w))) & 1  # [n][G][w], LSB first
        packed = np.packbits(
            bitplanes.reshape(len(rows), -1).astype(np.uint8), axis=1, bitorder="little"
        )
        where = starts[rows, cols][:, None] + np.arange(packed.shape[1])
        stream[where] = packed
    return Packed((q.shape[0], q.shape[1]), bits, group, widths, offsets, stream)


def decode(p: Packed) -> np.ndarray:
    """The integer weights [M][K] back (int64), after `check`."""
    check(p)
    m, k = p.shape
    ngroups = p.widths.shape[1]
    nbytes = p.widths.astype(np.int64) * (p.group // 8)
    starts = p.offsets[:-1, None] + np.cumsum(nbytes, axis=1) - nbytes
    out = np.zeros((m, ngroups, p.group), np.int64)
    for w in np.unique(p.widths):
        if w == 0:
            continue
        w = int(w)
        rows, cols = np.nonzero(p.widths == w)
        where = starts[rows, cols][:, None] + np.arange(p.group * w // 8)
        bitplanes = np.unpackbits(p.stream[where], axis=1, bitorder="little")
        bitplanes = bitplanes.reshape(len(rows), p.group, w).astype(np.int64)
        values = (bitplanes << np.arange(w)).sum(axis=2)
        out[rows, cols] = np.where(values >= 1 << (w - 1), values - (1 << w), values)
    return out.reshape(m, -1)[:, :k]


def check(p: Packed, where: str = "packed weights") -> None:
    """A ValueError naming `where` and what disagrees, before any decoding."""
    m, k = p.shape
    ngroups = -(-k // p.group) if k else 0
    if p.widths.shape != (m, ngroups):
        raise ValueError(
            f"{where}: widths {p.widths.shape} for weights {p.shape} in groups of {p.group}"
        )
    if p.widths.size and int(p.widths.max()) > p.bits:
        raise ValueError(
            f"{where}: a group of width {int(p.widths.max())} in a {p.bits}-bit precision"
        )
    row_bytes = p.widths.astype(np.int64).sum(axis=1) * (p.group // 8)
    want = np.concatenate([[0], np.cumsum(row_bytes)])
    if p.offsets.shape != (m + 1,) or not np.array_equal(p.offsets, want):
        raise ValueError(f"{where}: row offsets disagree with the group widths")
    if p.stream.size != int(want[-1]):
        raise ValueError(
            f"{where}: stream of {p.stream.size} bytes, the widths need {int(want[-1])} "
            "(truncated?)"
        )
