"""kernels/heap.py: freed heap pages go back to the kernel."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from kernels import heap


def _rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status (not Linux)")


def test_trim_returns_freed_pages_to_the_kernel():
    """2048 blocks of 96 KiB (under glibc's mmap threshold: they come from the heap);
    freeing every other one leaves 96 MiB of holes between blocks still in use, which
    free() keeps resident and trim() hands back."""
    libc = heap._libc()
    if libc is None:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(2048):
        block = libc.malloc(96 << 10)
        ctypes.memset(block, 1, 96 << 10)  # resident
        blocks.append(block)
    try:
        for block in blocks[::2]:
            libc.free(block)
        held = _rss_anon_kib()
        assert heap.trim()
        assert held - _rss_anon_kib() > 64 << 10  # KiB: most of the 96 MiB
    finally:
        for block in blocks[1::2]:
            libc.free(block)
