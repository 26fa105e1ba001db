"""The engine behind the server: one OpenCL device and the models loaded on it.

The HTTP side sees only `Engine.submit(model, precision, k, batch)`: it queues the
batch on the device and returns a function that waits for its `InferResult` (class
probabilities plus, for mixture-of-experts models, which experts each image went to
with their gate weights), so the batcher can queue the next batch before this one is
done and the device does not idle between batches. Every model, plain or mixture, at
every precision, is one network behind experts/networks/base.py's interface.

A Device and its kernels are not thread-safe: every method here except the
constructor and the metadata is called from the device's single worker thread
(see service/http/state.py). The functions `submit` returns only wait for events and
read host arrays; the batcher calls them from its completion thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from experts.model.architectures import ARCHITECTURES
from experts.model.dual_module import DualModuleError, Little, resolve_layers
from experts.model.mixture import MixtureSpec
from experts.model.model import Model, ModelError
from experts.model.repository import Repository
from experts.model.resolve import resolve_model
from experts.networks.base import Output, Runnable
from experts.networks.build import build_network, little_modules, store_for
from kernels.runtime import Device
from service.http.latency import LatencyModel
from service.scores import probabilities
from service.settings import Settings

log = logging.getLogger("moe_alexnet.engine")


# -- what the HTTP side knows of a model -----------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """A served model's metadata: enough to validate requests and preprocess images."""

    name: str
    version: str
    labels: list[str]
    input_meta: dict[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    mixture: MixtureSpec | None = None  # its parts, E experts and default k
    dual_layers: tuple[str, ...] = ()  # layers with a little module on offer

    @classmethod
    def from_model(cls, model: Model) -> ModelInfo:
        mixture = model.mixture if model.is_mixture else None
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
    precision: str = ""  # what the batch ran at
    k: int | None = None  # and, a mixture, with how many experts per image
    predicted_s: float | None = None  # precision=auto's prediction of its device time

    @classmethod
    def from_output(
        cls, network: Runnable, out: Output, n: int, precision: str, k: int | None
    ) -> InferResult:
        """The first n images of a (padded) batch's output."""
        routing = None
        if out.routing is not None:
            routing = [
                [ExpertChoice(int(e), float(w)) for e, w in zip(idx, gates, strict=True)]
                for idx, gates in zip(out.routing.indices[:n], out.routing.gates[:n], strict=True)
            ]
        return cls(probabilities(network, out.scores[:n]), routing, precision, k)


Pending = Callable[[], InferResult]  # waits for a submitted batch's result


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


# -- the engine --------------------------------------------------------------------------


class Engine:
    """One device, the configured models on it at every configured precision.

    `load()` opens the device, reads the models and warms every (model, precision,
    batch size) up; it is slow (seconds per AlexNet) and runs on the device thread
    while the server already answers liveness probes.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.precisions = settings.precisions
        self.device_name = ""
        self.models: dict[str, ModelInfo] = {}
        self.weight_bytes: dict[tuple[str, str], int] = {}
        self._networks: dict[tuple[str, str], Runnable] = {}
        # Dual-module inference: per model, the little modules on offer (its
        # dual-module file's, and MOE_DUAL_MODULE's layers), and the networks with them,
        # made on first use: each shares its plain network's weights.
        self._metas: dict[str, dict[str, Any]] = {}
        self._littles: dict[str, dict[str, Little]] = {}
        self._default_dual: dict[str, tuple[str, ...]] = {}  # MOE_DUAL_MODULE, per model
        self._duals: dict[tuple[str, str, tuple[str, ...]], Runnable] = {}
        self.latency = LatencyModel()  # precision=auto's predictions (service/http/latency.py)

    def load(self) -> None:
        s = self.settings
        device = Device(s.device)
        self.device_name = device.name
        for name in model_names(s):
            model = resolve_model(name, s.model_repository, s.random_weights, s.seed)
            self._metas[name] = model.meta
            littles = dict(model.dual_module.layers) if model.dual_module else {}
            default = self._default_layers(model)
            littles |= little_modules(model, default) if default else {}
            self._littles[name] = littles
            self._default_dual[name] = default
            store = store_for(self.precisions)  # int16 and int8: one copy of the weights
            for precision in self.precisions:
                network = build_network(model, device, precision, s.layer_precisions, store=store)
                network.warm_up(s.max_batch_size)
                self._time(model, precision, network)
                self._networks[(name, precision)] = network
                self.weight_bytes[(name, precision)] = network.weight_bytes
                if default:  # the default little modules, warmed up like the rest
                    dual = self._network(name, precision, default)
                    dual.warm_up(s.max_batch_size)
                    self.weight_bytes[(name, precision)] += dual.little_bytes
            self.models[name] = replace(ModelInfo.from_model(model), dual_layers=tuple(littles))
            log.info(
                "loaded model %s v%s (%s) on %s",
                name,
                model.version,
                ",".join(self.precisions),
                device.name,
            )

    def _time(self, model: Model, precision: str, network: Runnable) -> None:
        """Seed the latency model: each batch size (and a mixture's every k up to its
        own, what k=auto may choose) once more, now that it is warm."""
        ks = range(1, model.mixture.k + 1) if model.is_mixture else [None]
        for k in ks:
            for size in network.batch_sizes(self.settings.max_batch_size):
                x = np.zeros((size, *network.input_shape), np.float32)
                start = time.perf_counter()
                network.run(x, k)
                seconds = time.perf_counter() - start
                self.latency.observe((model.name, precision, k), size, seconds)

    def _default_layers(self, model: Model) -> tuple[str, ...]:
        """MOE_DUAL_MODULE's layers in `model`; none where it names no layer of it that
        can take a little module (a server of several models: the setting applies to
        those it fits, with a warning for the rest)."""
        if not self.settings.dual_module:
            return ()
        try:
            return tuple(resolve_layers(model.meta, self.settings.dual_module))
        except DualModuleError as exc:
            log.warning("MOE_DUAL_MODULE does not apply to model %s: %s", model.name, exc)
            return ()

    def dual_target(self, model: str, request: tuple[str, ...] | None) -> tuple[str, ...]:
        """The layers a request's dual_module (None: the server's default) names in
        `model`, checked: a DualModuleError naming the layer where it cannot run one."""
        if request is None:
            return self._default_dual[model]
        if not request:
            return ()
        names = resolve_layers(self._metas[model], request)
        missing = [n for n in names if n not in self._littles[model]]
        if missing:
            offered = ", ".join(self._littles[model]) or "none"
            raise DualModuleError(
                f"model {model!r} has no little module for {', '.join(missing)} on this "
                f"server (offered: {offered}; fit one with `moe-alexnet calibrate "
                "--dual-module`, or set MOE_DUAL_MODULE)"
            )
        return tuple(names)

    def _network(self, model: str, precision: str, dual: tuple[str, ...]) -> Runnable:
        network = self._networks[(model, precision)]
        if not dual:
            return network
        key = (model, precision, dual)
        if key not in self._duals:
            littles = {n: self._littles[model][n] for n in dual}
            self._duals[key] = network.with_dual_module(littles)
        return self._duals[key]

    def submit(
        self,
        model: str,
        precision: str,
        k: int | None,
        batch: np.ndarray,
        dual: tuple[str, ...] = (),
    ) -> Pending:
        """Queue a batch (padded up to the next batch size the network runs); `dual`:
        the layers to run with their little modules (`dual_target`)."""
        network = self._network(model, precision, dual)
        n = len(batch)
        sizes = network.batch_sizes(self.settings.max_batch_size)
        size = next(size for size in sizes if size >= n)
        if size != n:
            pad = np.zeros((size - n, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, pad])
        pending = network.submit(batch, k)
        return lambda: InferResult.from_output(network, pending(), n, precision, k)
