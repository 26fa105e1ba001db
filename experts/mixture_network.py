"""A mixture of experts compiled for one OpenCL device, with sparse execution.

The stem and the gate run on the whole batch; the batch is then split by chosen
expert and each expert runs once, on its own images only (an expert no image chose
costs nothing); the chosen experts' features are merged back in image order, weighted
by the renormalised gate weights, and the shared head runs on the merged batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experts.mixture import MixtureSpec, mixture_spec, part_weights, route
from experts.network import Network
from kernels.runtime import Device


@dataclass
class Routing:
    """Which experts each image went to, and with what weight: (N, k) each."""

    indices: np.ndarray
    gates: np.ndarray

    def counts(self, experts: int) -> np.ndarray:
        """Images routed to each expert (an image sent to k experts counts k times)."""
        return np.bincount(self.indices.ravel(), minlength=experts)


class MixtureNetwork:
    """Run a mixture on NCHW float32 batches; `run` returns (scores, routing)."""

    def __init__(self, device: Device, meta: dict[str, Any], weights: dict[str, np.ndarray]):
        self.spec: MixtureSpec = mixture_spec(meta)
        s = self.spec
        self.stem = Network(device, s.stem, s.input_shape, part_weights(weights, "stem"))
        self.gate = Network(device, s.gate, s.stem_shape, part_weights(weights, "gate"))
        # An expert sees every sub-batch size from 1 to the batch: keep all their plans.
        self.experts = [
            Network(
                device, s.expert, s.stem_shape, part_weights(weights, f"experts.{i}"), max_plans=64
            )  # fmt: skip
            for i in range(s.experts)
        ]
        self.head = Network(device, s.head, (s.features,), part_weights(weights, "head"))
        parts = [self.stem, self.gate, *self.experts, self.head]
        self.weight_bytes = sum(p.weight_bytes for p in parts)
        self.input_shape = s.input_shape

    def activation_bytes(self, n: int) -> int:
        """Device buffers held for batch size n (the experts' for every sub-batch size)."""
        parts = [self.stem, self.gate, self.head]
        total = sum(p.plan(n).activation_bytes for p in parts)
        return total + sum(p.planned_bytes() for p in self.experts)

    def run(self, x: np.ndarray, k: int | None = None) -> tuple[np.ndarray, Routing]:
        """Forward a batch with each image sent to its top-k experts (default: the
        model's own k). Scores are the head's output, (N, classes)."""
        k = self.spec.check_k(k)
        n = len(x)
        stem = self.stem.run(x).reshape(n, *self.spec.stem_shape)
        indices, gates = route(self.gate.run(stem), k)
        merged = np.zeros((n, self.spec.features), np.float32)
        for e in np.unique(indices):
            rows, slot = np.nonzero(indices == e)
            features = self.experts[e].run(stem[rows])
            merged[rows] += gates[rows, slot][:, None] * features
        return self.head.run(merged), Routing(indices, gates)
