"""Handing freed heap memory back to the kernel after start-up.

PoCL compiles kernels in-process with LLVM, and loading a model makes large numpy
temporaries: both free much of what they allocated, but glibc's allocator keeps freed
pages inside its heaps, where they stay resident. `malloc_trim(0)` returns every whole
free page. Measured on a server holding fashion-moe at int8: with PoCL's cache cold (a
new container) 321 -> 309 MiB; warm 189 -> 187 MiB (the rest of what a cold start
costs, about 120 MiB, is LLVM's and PoCL's own state, which they keep).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim() -> bool:
    """Return the heap's free pages to the kernel; False where the C library has no
    malloc_trim (not glibc) or none could be returned."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
