"""Networks and mixtures run with the numpy twins (kernels/reference.py): the oracle
of the whole-network tests, the dense reference of the sparse mixture, and what
calibration observes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experts.layers import Layer, Weights
from experts.model.mixture import mixture_spec, part_weights
from kernels import reference as ref

Observe = Callable[[str, np.ndarray], None]  # (layer name, that layer's input)


def forward(
    layers: Sequence[Layer],
    weights: Weights,
    x: np.ndarray,
    observe: Observe | None = None,
    littles: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """x: (N, C, H, W) float32 -> (N, features). `observe(name, input)` sees the input
    of every weighted layer (calibration). `littles` (layer -> `Little`): those layers
    with dual-module inference, their outputs 0 where the little module's estimate
    is below its threshold (before or after the ReLU: 0 either way)."""
    for layer in layers:
        if observe is not None and layer.weighted:
            observe(layer.name, x)
        little = (littles or {}).get(layer.name)
        y = layer.reference(x, weights)
        if little is not None:
            y = ref.skip_insensitive(y, little.estimate(x), little.threshold[0])
        x = y
    return x.reshape(x.shape[0], -1)


def route(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k routing: (indices, weights), each (N, k).

    Softmax over the gate logits, the k largest kept (a stable sort: ties go to the
    lower index) and renormalised, which equals a softmax over the k kept logits.
    """
    z = logits.astype(np.float64)
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(z, order, axis=1)
    w = np.exp(top - top[:, :1])
    return order.astype(np.int32), (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def mixture_forward(
    meta: dict[str, Any], weights: Weights, x: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole mixture in numpy, every expert on every image (the dense oracle the
    sparse engine is tested against). Returns (scores, expert indices, gate weights)."""
    spec = mixture_spec(meta)
    k = spec.check_k(k)
    stem = forward(spec.stem, part_weights(weights, "stem"), x).reshape(len(x), *spec.stem_shape)
    indices, gates = route(forward(spec.gate, part_weights(weights, "gate"), stem), k)
    features = np.stack(
        [
            forward(spec.expert, part_weights(weights, f"experts.{i}"), stem)
            for i in range(spec.experts)
        ]
    )  # (E, N, D)
    n = np.arange(len(x))[:, None]
    merged = (features[indices, n] * gates[:, :, None].astype(np.float64)).sum(axis=1)
    scores = forward(spec.head, part_weights(weights, "head"), merged.astype(np.float32))
    return scores, indices, gates
