"""Sizes that the Python launchers and the OpenCL C kernels must agree on, and the
GEMM's weight layouts that follow from them.

Every program is built with these as `-D` defines (kernels/runtime.py), and gemm.cl
refuses to build with other values than the ones its unrolled macros are written for:
a change here that the kernels do not follow fails at build time, naming the file.
"""

from collections.abc import Callable

import numpy as np

ROW_BLOCK = 8  # rows of C (output channels) per GEMM register block; A is packed so
LANES = 16  # floats per vector: a GEMM panel is LANES * NV columns wide
LANE_BLOCK = 2 * LANES  # output channels per work-item of conv_lanes.cl (two vectors)

DEFINES = {"ROW_BLOCK": ROW_BLOCK, "LANES": LANES}


# Relative speed per column of the GEMM at each panel width (ROW_BLOCK x LANES*NV
# blocks) on PoCL's CPU device: narrower blocks reload A more often per FLOP.
PANEL_SPEED = {3: 1.0, 2: 0.9, 1: 0.6}


def choose_nv(columns: int, widest: int = 3) -> int:
    """Panel width (LANES * NV columns, NV <= `widest`) for a GEMM with `columns`
    columns: the one that finishes first, counting the padding of the last panel (49
    Winograd tiles at batch 1 run as 64 columns, not 96; 16 tiles as 16)."""
    widths = [nv for nv in PANEL_SPEED if nv <= widest]
    return min(widths, key=lambda nv: -(-columns // (LANES * nv)) * nv / PANEL_SPEED[nv])


def pack_rows(a: np.ndarray, block: int = ROW_BLOCK, group: int = 1) -> np.ndarray:
    """[M][K] -> [ceil(M/block)][ceil(K/group)][block][group], zero rows and columns
    appended: the GEMM's A panels (group 4: gemm.cl's DOT4 reads four k at a time)."""
    m, k = a.shape
    mp, kp = -(-m // block) * block, -(-k // group) * group
    padded = np.zeros((mp, kp), a.dtype)
    padded[:m, :k] = a
    panels = padded.reshape(mp // block, block, kp // group, group).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(panels).reshape(mp // block, kp // group, block * group)


def tap_rows(
    w: np.ndarray, cg: int, cg4: int, group: int = 1, block: int = ROW_BLOCK
) -> np.ndarray:
    """[M][cg * KH * KW] weights, k over (channel, i, j), with k over (i, j, channel),
    each tap's cg channels followed by zeros up to cg4, as `pack_rows` packs them."""
    taps = w.reshape(len(w), cg, -1).transpose(0, 2, 1)
    taps = np.pad(taps, ((0, 0), (0, 0), (0, cg4 - cg))).reshape(len(w), -1)
    return pack_rows(taps, block, group)


def dot4_rows(w: np.ndarray, cg: int, cg4: int) -> np.ndarray:
    """`tap_rows` as DOT4 reads them (gemm.cl): four k of a row to an int."""
    return tap_rows(w, cg, cg4, group=4)


def lane_rows(w: np.ndarray, cg: int, cg4: int) -> np.ndarray:
    """`tap_rows` as conv_lanes.cl reads them: LANE_BLOCK rows (output channels) a
    block, four k of a row to an int: [M/32][K/4][32][4]."""
    return tap_rows(w, cg, cg4, group=4, block=LANE_BLOCK)


def window_rows(w: np.ndarray, cg: int, kh: int, kw: int) -> np.ndarray:
    """[M][cg * KH * KW] weights as gemm.cl's direct DOT4 reads them: each row of a
    filter's taps in fours (zeros past KW), four taps to an int, k over (channel, i,
    four taps)."""
    kj = -(-kw // 4)
    rows = np.pad(w.reshape(len(w), cg, kh, kw), ((0, 0), (0, 0), (0, 0), (0, 4 * kj - kw)))
    return pack_rows(rows.reshape(len(w), -1), group=4)


def per_expert(
    layout: Callable[[np.ndarray], np.ndarray], experts: int
) -> Callable[[np.ndarray], np.ndarray]:
    """`layout` applied to each of a mixture's grouped experts' equal row ranges of a
    [E * M][K] matrix, one after the other: each expert's panels start whole, E times
    one expert's layout apart (gemm.cl's GROUPED)."""

    def laid_out(a: np.ndarray) -> np.ndarray:
        return np.concatenate([layout(part).ravel() for part in np.split(a, experts)])

    return laid_out
