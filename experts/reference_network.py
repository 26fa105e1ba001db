"""The same sequential network run with the numpy twins (kernels/reference.py):
the oracle for whole-network tests and the mixture's reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from experts.spec import normalise_layers
from kernels import reference as ref


def forward(
    layers: list[dict[str, Any]],
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    observe: Callable[[str, np.ndarray], None] | None = None,
) -> np.ndarray:
    """x: (N, C, H, W) float32 -> (N, features). `observe(name, input)` sees the input
    of every conv and linear layer (calibration)."""
    for layer in normalise_layers(layers):
        op, name = layer["op"], layer["name"]
        w, b = weights.get(f"{name}.weight"), weights.get(f"{name}.bias")
        if observe is not None and op in ("conv", "linear"):
            observe(name, x)
        if op == "conv":
            x = ref.conv2d(
                x, w, b, layer["stride"], layer["padding"], layer["groups"], layer["relu"]
            )
        elif op == "maxpool":
            x = ref.maxpool2d(
                x, layer["kernel"], layer["stride"], layer["padding"], layer["ceil_mode"]
            )
        elif op == "avgpool":
            x = ref.avgpool2d(x, layer["kernel"], layer["stride"], layer["padding"],
                              layer["ceil_mode"], layer["count_include_pad"])  # fmt: skip
        elif op == "adaptive_avgpool":
            x = ref.adaptive_avgpool2d(x, layer["output_size"])
        elif op == "lrn":
            x = ref.lrn(x, layer["size"], layer["alpha"], layer["beta"], layer["k"])
        elif op == "relu":
            x = ref.relu(x)
        elif op == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op == "linear":
            x = ref.linear(x, w, b, layer["relu"])
        elif op == "softmax":
            x = ref.softmax(x)
        # dropout: identity at inference
    return x.reshape(x.shape[0], -1)
