"""The interface every layer launcher shares (what a network step calls)."""

from __future__ import annotations

from typing import Any


class Launcher:
    """One layer compiled for a device: built once (kernels compiled, weights packed and
    uploaded), then `launcher(n, x, y, scratch)` enqueues it for a batch of n images,
    reading device buffer x and writing y (scratch: `scratch_bytes(n)` bytes)."""

    weight_bytes: int = 0  # device bytes the layer's weights hold
    weight_count: int = 0  # the layer's weights (its filters' or matrix's entries)
    bits_per_weight: float = 0.0  # as stored: the precision's, or packed (bitgroups.py)

    def scratch_bytes(self, n: int) -> int:
        return 0

    def runs_at(self, n: int) -> bool:
        """False where the layer's output is its input, unchanged (the step is skipped)."""
        return True

    def __call__(self, n: int, x: Any, y: Any, scratch: Any) -> None:
        raise NotImplementedError
