"""The one interface of everything runnable: a plain network and a mixture of experts
alike take a batch, queue it on the device and hand back a function that waits for
its scores (and, for a mixture, the routing), so callers (the server's batcher, the
commands, the tests) never ask which kind they hold."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from experts.layers import Shape
from experts.model.mixture import MixtureSpec
from kernels.ops import SkipStats


@dataclass
class Routing:
    """Which experts each image went to, and with what weight: (N, k) each; and the
    gate's probability (softmax over all E) of each image's first choice, (N,): with
    k = 1 the renormalised weight is always 1, this says how sure the gate was."""

    indices: np.ndarray
    gates: np.ndarray
    confidence: np.ndarray

    def counts(self, experts: int) -> np.ndarray:
        """Images routed to each expert (an image sent to k experts counts k times)."""
        return np.bincount(self.indices.ravel(), minlength=experts)


class Output(NamedTuple):
    """A batch's result: the last layer's output (N, classes) and, for a mixture, the
    routing (None for a plain network)."""

    scores: np.ndarray
    routing: Routing | None = None


Pending = Callable[[], Output]  # waits for a submitted batch's output


class Runnable(ABC):
    """A model compiled for one device at one precision."""

    input_shape: Shape  # per image
    weight_bytes: int  # device bytes of every weight
    mixture: MixtureSpec | None  # the parts and default k of a mixture; None otherwise
    ends_in_probabilities: bool  # the last layer is a softmax

    @abstractmethod
    def submit(self, x: np.ndarray, k: int | None = None) -> Pending:
        """Queue a forward pass of x ((N, C, H, W) float32) and return a function that
        waits for its output. `k`: experts per image (mixtures only; default: the
        model's own). The device queue runs in order, so a batch submitted behind this
        one reuses its buffers only once this one's output has been read back."""

    def run(self, x: np.ndarray, k: int | None = None) -> Output:
        """Forward a batch and wait for its output."""
        return self.submit(x, k)()

    @abstractmethod
    def activation_bytes(self, n: int) -> int:
        """Device bytes of the buffers held for batches of n."""

    @abstractmethod
    def batch_sizes(self, max_batch: int) -> list[int]:
        """The batch sizes run for batches of up to `max_batch`: a smaller batch is
        padded up to the next (each size costs buffers and, on PoCL, kernel builds)."""

    @abstractmethod
    def warm_up(self, max_batch: int) -> None:
        """Build everything batches of up to `max_batch` need (kernels, buffer plans),
        so that none of it happens while serving."""

    @abstractmethod
    def with_dual_module(self, littles: Mapping[str, Any]) -> Runnable:
        """The same network with little modules (layer full name -> `Little`,
        experts/model/dual_module.py) on those layers, sharing every weight buffer."""

    @abstractmethod
    def parts(self) -> list[Any]:
        """The plain networks it runs (a Network: itself; a mixture: stem, gate,
        experts, head)."""

    @abstractmethod
    def layer_bits(self) -> dict[str, tuple[int, float]]:
        """Per layer with weights (full name): how many, and the bits each takes as
        stored (8 for int8, fewer where packed: kernels/bitgroups.py)."""

    @property
    @abstractmethod
    def little_bytes(self) -> int:
        """Device bytes of its little modules (0 without)."""

    @abstractmethod
    def take_skip_stats(self) -> dict[str, SkipStats]:
        """Per layer with a little module (full name), what its big layer did since
        the last call: images, weight rows read, outputs computed."""

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """x as contiguous float32, or a ValueError naming the shape expected."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"expected input (N, {expected}), got {x.shape}")
        return x
