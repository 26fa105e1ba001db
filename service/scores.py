"""Class scores as users see them: softmax probabilities, the top k with labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from experts.networks.base import Runnable


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(network: Runnable, scores: np.ndarray) -> np.ndarray:
    """Class probabilities: the network's own softmax, or one applied to its logits."""
    if network.ends_in_probabilities:
        return scores
    return _softmax(scores.astype(np.float64)).astype(np.float32)


def top_predictions(probs: np.ndarray, labels: list[str], top_k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"index": int(i), "label": labels[i], "score": float(probs[i])} for i in order]
