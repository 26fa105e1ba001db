"""Host memory on 2 MiB pages for the buffers a CPU device streams.

On PoCL's CPU device a buffer is host memory that PoCL allocates on ordinary 4 KiB
pages. A fully connected layer at batch 1 streams its weights once per image (fc6:
151 MB), one TLB entry per 4 KiB; on 2 MiB transparent huge pages the same kernel
ran 5-10% faster on these machines (docs/benchmark-log.md). Linux gives a private
anonymous mapping huge pages where it is asked to (madvise) or always; elsewhere the
copy is made on ordinary pages and works the same.
"""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 2 << 20
# Smaller arrays would waste most of a huge page.
MIN_BYTES = HUGE_PAGE


def huge_page_copy(array: np.ndarray) -> np.ndarray:
    """A C-ordered copy of `array` whose memory starts on a 2 MiB boundary of a
    mapping advised to use huge pages where they are whole. The copy keeps the mapping
    alive; the unused head of the mapping is never touched, so never resident."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    region = mmap.mmap(-1, array.nbytes + HUGE_PAGE, flags=flags) if flags else None
    if region is None:  # no anonymous private mappings here (not POSIX)
        return np.ascontiguousarray(array).copy()
    raw = np.frombuffer(region, np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    # Only the whole huge pages: a tail advised too would take a whole 2 MiB page for
    # its last bytes (fashion-alexnet fp32 held 17 MiB more for 46 MiB of weights).
    whole = array.nbytes // HUGE_PAGE * HUGE_PAGE
    if whole and hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE, start, whole)
    out = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out
