"""The engine behind the server: one OpenCL device and the models loaded on it.

The HTTP side sees only `Engine.submit(model, precision, k, batch)`: it queues the
batch on the device and returns a function that waits for its `InferResult` (class
probabilities plus, for mixture-of-experts models, which experts each image went to
with their gate weights), so the batcher can queue the next batch before this one is
done and the device does not idle between batches.
Everything that varies per model kind or precision is a `Runner` built by
`build_runner`: new precisions (fp16, int16, int8) and the mixture engine plug in
there without the routes, batching or metrics changing.

A Device and its kernels are not thread-safe: every method here except the
constructor and the metadata is called from the device's single worker thread
(see service/state.py). The functions `submit` returns only wait for events and
read host arrays; the batcher calls them from its completion thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from experts.repository import Model, ModelError, Repository
from service.settings import Settings

log = logging.getLogger("moe_alexnet.engine")


# -- what the HTTP side knows of a model -----------------------------------------------


@dataclass(frozen=True)
class MixtureInfo:
    """A mixture of experts: E experts, each image routed to k of them (default k)."""

    experts: int
    default_k: int


@dataclass(frozen=True)
class ModelInfo:
    """A served model's metadata: enough to validate requests and preprocess images."""

    name: str
    version: str
    labels: list[str]
    input_meta: dict[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    mixture: MixtureInfo | None = None

    @classmethod
    def from_model(cls, model: Model) -> ModelInfo:
        mixture = None
        if getattr(model, "is_mixture", False):
            spec = model.mixture
            mixture = MixtureInfo(experts=int(spec.experts), default_k=int(spec.k))
        return cls(
            model.name,
            model.version,
            model.labels,
            dict(model.meta["input"]),
            model.input_shape,
            int(model.num_classes),
            mixture,
        )


@dataclass(frozen=True)
class ExpertChoice:
    """One expert an image was routed to, and its gate weight (weights sum to 1)."""

    expert: int
    weight: float


@dataclass
class InferResult:
    """probs: (N, classes) float32; routing: per image its experts (None: not a mixture)."""

    probs: np.ndarray
    routing: list[list[ExpertChoice]] | None = None


Pending = Callable[[], InferResult]  # waits for a submitted batch's result


class Runner(Protocol):
    """One model at one precision on one device."""

    weight_bytes: int

    def submit(self, batch: np.ndarray, k: int | None) -> Pending: ...

    def warm_up(self) -> None: ...


# -- batch sizes -------------------------------------------------------------------------


def batch_buckets(max_batch_size: int) -> list[int]:
    """The batch sizes actually run: powers of two below the maximum, and the maximum.

    Each new batch size costs a buffer plan and, on PoCL, kernel builds (seconds for
    AlexNet); a handful of fixed sizes, all built at warm-up, keeps that off the
    request path. A batch is padded up to the next size.
    """
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch_size]


def bucket_for(n: int, buckets: list[int]) -> int:
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"batch of {n} is over the largest batch size {buckets[-1]}")


# -- runners -----------------------------------------------------------------------------


class _ScoreKind:
    """What `service.scores.probabilities` needs to know of a model (whether its last layer
    is a softmax), without holding the model: its host copy of the weights would double
    the resident memory once the device has its own."""

    def __init__(self, model: Model) -> None:
        self.layers = [model.layers[-1]]


class NetworkRunner:
    """A plain (non-mixture) model at one precision: one `experts.network.Network`."""

    def __init__(self, model: Model, device: Any, precision: str, buckets: list[int],
                 layers: dict[str, str] | None = None) -> None:  # fmt: skip
        from experts.loading import build_network

        self.input_shape = model.input_shape
        self.scores = _ScoreKind(model)
        self.buckets = buckets
        self.network = build_network(model, device, precision, layers)
        # Keep a plan per bucket: more sizes than Network's default would rebuild plans.
        self.network.max_plans = max(getattr(self.network, "max_plans", 4), len(buckets))
        self.weight_bytes = int(self.network.weight_bytes)

    def submit(self, batch: np.ndarray, k: int | None) -> Pending:
        from service.scores import probabilities

        n = len(batch)
        size = bucket_for(n, self.buckets)
        if size != n:
            pad = np.zeros((size - n, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, pad])
        outputs = self.network.submit(batch)
        return lambda: InferResult(probabilities(self.scores, outputs()[:n]))

    def warm_up(self) -> None:
        """Run every bucket size once: kernels built, plans recorded, caches warm."""
        shape = self.input_shape
        for size in self.buckets:
            self.network.run(np.zeros((size, *shape), dtype=np.float32))


class MixtureRunner:
    """A mixture of experts at one precision: `experts.mixture_network.MixtureNetwork`.

    No padding to bucket sizes here: padded images would be routed to experts and cost
    real work. Instead the stem, gate and head keep a plan for every batch size, and
    warm-up runs every size with k = E, so every expert run one by one is built at every
    sub-batch size; grouped experts run n * k rows, so there warm-up runs every (n, k).
    (PoCL compiles a kernel anew for each new launch geometry: seconds, which must not
    fall on a request.)
    """

    def __init__(self, model: Model, device: Any, precision: str, max_batch: int,
                 layers: dict[str, str] | None = None) -> None:  # fmt: skip
        from experts.loading import build_network

        self.input_shape = model.input_shape
        self.scores = _ScoreKind(model)
        self.max_batch = max_batch
        self.network = build_network(model, device, precision, layers)
        for part in (self.network.stem, self.network.gate, self.network.head):
            part.max_plans = max(getattr(part, "max_plans", 4), max_batch)
        self.weight_bytes = int(self.network.weight_bytes)

    def submit(self, batch: np.ndarray, k: int | None) -> Pending:
        """Runs the batch before returning: routing reads the gate back mid-way."""
        from service.scores import probabilities

        scores, routing = self.network.run(batch, k)
        routes = [
            [ExpertChoice(int(e), float(w)) for e, w in zip(idx, gates, strict=True)]
            for idx, gates in zip(routing.indices, routing.gates, strict=True)
        ]
        result = InferResult(probabilities(self.scores, scores), routes)
        return lambda: result

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        experts = self.network.spec.experts
        grouped = self.network.grouped is not None
        for k in range(1, experts + 1) if grouped else [experts]:
            for size in range(1, self.max_batch + 1):
                x = rng.standard_normal((size, *self.input_shape), dtype=np.float32)
                self.network.run(x, k)


def build_runner(model: Model, device: Any, precision: str, buckets: list[int],
                 layers: dict[str, str] | None = None) -> Runner:  # fmt: skip
    """The slot for new model kinds and precisions (`layers`: per-layer overrides)."""
    if getattr(model, "is_mixture", False):
        return MixtureRunner(model, device, precision, buckets[-1], layers)
    return NetworkRunner(model, device, precision, buckets, layers)


# -- model selection ---------------------------------------------------------------------


def model_names(settings: Settings) -> list[str]:
    """The models to serve: `settings.models`, else every model in the repository, or
    with `random_weights` the default built-in architecture."""
    if settings.models:
        return list(dict.fromkeys(settings.models))
    if settings.random_weights:
        return [settings.default_model]
    return Repository(settings.model_repository).names()


def check_models(settings: Settings) -> list[str]:
    """Names to serve, checked without loading any weights (fast, for fail-fast startup):
    raises ModelError naming what is wrong."""
    from experts.architectures import ARCHITECTURES

    names = model_names(settings)
    repo = Repository(settings.model_repository)
    if not names:
        raise ModelError(
            f"no models to serve: the repository {repo.root} is empty; add one with "
            "`moe-alexnet import-onnx`, point MOE_MODEL_REPOSITORY elsewhere, or pass "
            "--random-weights to serve a built-in architecture"
        )
    present = set(repo.names())
    for name in names:
        if settings.random_weights and name in ARCHITECTURES:
            continue
        if name not in present:
            hint = (
                " (a built-in architecture: add --random-weights)" if name in ARCHITECTURES else ""
            )
            available = ", ".join(sorted(present)) or "none"
            raise ModelError(
                f"unknown model {name!r}{hint}; the repository {repo.root} has: {available}"
            )
    return names


def check_precisions(precisions: list[str]) -> list[str]:
    from kernels.precision import PRECISIONS

    if not precisions:
        raise ValueError(f"no precision given; supported: {', '.join(PRECISIONS)}")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(
            f"unknown precision {', '.join(unknown)}; supported: {', '.join(PRECISIONS)}"
        )
    return list(dict.fromkeys(precisions))


# -- the engine --------------------------------------------------------------------------


class Engine:
    """One device, the configured models on it at every configured precision.

    `load()` opens the device, reads the models and warms every (model, precision,
    batch size) up; it is slow (seconds per AlexNet) and runs on the device thread
    while the server already answers liveness probes.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.precisions = check_precisions(settings.precisions)
        self.buckets = batch_buckets(settings.max_batch_size)
        self.device_name = ""
        self.models: dict[str, ModelInfo] = {}
        self.weight_bytes: dict[tuple[str, str], int] = {}
        self._runners: dict[tuple[str, str], Runner] = {}

    def load(self) -> None:
        from experts.loading import resolve_model
        from kernels.runtime import Device

        s = self.settings
        device = Device(s.device)
        self.device_name = device.name
        names = model_names(s)
        for name in names:
            model = resolve_model(name, s.model_repository, s.random_weights, s.seed)
            for precision in self.precisions:
                runner = build_runner(model, device, precision, self.buckets,
                                      s.layer_precision)  # fmt: skip
                runner.warm_up()
                self._runners[(name, precision)] = runner
                self.weight_bytes[(name, precision)] = runner.weight_bytes
            self.models[name] = ModelInfo.from_model(model)
            log.info(
                "loaded model %s v%s (%s) on %s",
                name,
                model.version,
                ",".join(self.precisions),
                device.name,
            )

    def submit(self, model: str, precision: str, k: int | None, batch: np.ndarray) -> Pending:
        return self._runners[(model, precision)].submit(batch, k)
