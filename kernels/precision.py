"""The precision table: one row per precision, read by every launcher.

A precision is data, not a class hierarchy and not a copy of a kernel: a row says how
weights are stored and what `-D` defines the kernels are built with. Arithmetic and
accumulation stay in float for both floating-point rows; fp16 halves the bytes of
every weight (the fully connected layers of AlexNet are 96% of its parameters and,
at small batch, bound by the memory traffic of reading them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Precision:
    name: str
    weight_dtype: Any  # numpy dtype the weights are stored in on the device
    accumulate: str  # what the dot products accumulate in
    defines: dict[str, int] = field(default_factory=dict)
    description: str = ""

    def store(self, weights: np.ndarray) -> np.ndarray:
        """Weights as the device keeps them (float32 in, this precision's storage out)."""
        return np.ascontiguousarray(weights, dtype=self.weight_dtype)

    def round_trip(self, weights: np.ndarray) -> np.ndarray:
        """The float32 values the kernels compute with: the numpy twins' weights."""
        return self.store(weights).astype(np.float32)


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", np.float32, "float", {"WEIGHT_HALF": 0}, "the reference"),
        Precision(
            "fp16",
            np.float16,
            "float",
            {"WEIGHT_HALF": 1},
            "weights stored as half (vload_half), float arithmetic",
        ),  # fmt: skip
    )
}


def get_precision(name: str) -> Precision:
    """The table row for `name`; a ValueError naming the supported ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown precision {name!r}; supported: {', '.join(PRECISIONS)}"
        ) from None
