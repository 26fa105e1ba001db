"""The state one app instance shares between its routes: settings, metrics, engine,
batcher, the device thread, readiness and draining.

Lifecycle: `start()` (in the lifespan) launches the device thread, which opens the
device, loads and warms every model, flips `ready`, then runs the batch loop. The
server is live meanwhile and answers 503 to inference until ready. SIGTERM sets
`draining` (readiness false) while uvicorn lets in-flight requests finish; `stop()`
(lifespan shutdown) then closes the batcher, which runs what is still queued, and
joins the thread within the drain timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from experts.layers import SpecError
from experts.model.dual_module import DualModuleError, parse_dual_request
from experts.model.mixture import check_k
from kernels import heap
from kernels.precision import PRECISIONS
from service.failures import EXPECTED
from service.http.batching import (
    Batcher,
    BatcherClosed,
    BatchKey,
    DeadlineExceeded,
    Job,
    JobResult,
    Pressure,
    QueueFull,
)
from service.http.decode_pool import DecodePool
from service.http.engine import Engine, InferResult, ModelInfo, Pending
from service.http.errors import ApiError
from service.http.latency import AUTO, Scheduler
from service.http.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("moe_alexnet.server")
RETRY_AFTER_S = "1"


@dataclass(frozen=True)
class Target:
    """A validated request target: which model, precision and k a request runs with."""

    model: ModelInfo
    precision: str
    k: int | None
    dual: tuple[str, ...] = ()  # layers run with their little modules

    @property
    def key(self) -> BatchKey:
        return (self.model.name, self.precision, self.k, self.dual)


class ServiceState:
    """See the module docstring."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.max_batch_size)
        self.engine = engine if engine is not None else Engine(settings)
        self.scheduler = Scheduler(self.engine.latency, self.engine.precisions)
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1e3,
            max_queue_size=settings.max_queue_size,
            on_batch=self._on_batch,
            on_depth=self._on_depth,
            too_late=self._too_late,
        )
        self.decode_pool = DecodePool(settings.decode_workers)
        self.ready = False
        self.draining = False
        self.fatal: str | None = None
        self.on_fatal: Callable[[str], None] | None = None  # set by `moe-alexnet serve`
        self._thread: threading.Thread | None = None
        self._loaded = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._device_main, name="device", daemon=True)
        self._thread.start()

    def _device_main(self) -> None:
        """The one thread that touches the device: load, warm up, then run batches."""
        started = time.monotonic()
        try:
            self.engine.load()
        except Exception as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            self.fatal = message
            log.error("startup failed: %s", message, exc_info=not isinstance(exc, EXPECTED))
            self.batcher.close()
            self.batcher.fail_pending(ApiError(503, f"the server failed to start: {message}"))
            self._loaded.set()
            if self.on_fatal is not None:
                self.on_fatal(message)
            return
        for (model, precision), nbytes in self.engine.weight_bytes.items():
            self.metrics.weight_bytes.labels(model, precision).set(nbytes)
        heap.trim()  # what loading and compiling freed, out of the resident set
        self.ready = True
        self._update_ready()
        self._loaded.set()
        log.info(
            "ready: %d model(s) on %s in %.1f s",
            len(self.engine.models),
            self.engine.device_name,
            time.monotonic() - started,
        )
        self.batcher.run()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading finished (ready or failed); for tests and tools."""
        return self._loaded.wait(timeout)

    def begin_drain(self) -> None:
        """Readiness goes false; requests already accepted still complete."""
        if not self.draining:
            log.info("draining: readiness is now false")
        self.draining = True
        self._update_ready()

    def stop(self, timeout: float) -> None:
        """Run what is queued, stop the device thread (bounded by `timeout`)."""
        self.begin_drain()
        self.batcher.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("device thread still busy after %.1f s; leaving it", timeout)
                self.batcher.fail_pending(ApiError(503, "the server is shutting down"))
        self.decode_pool.shutdown()

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.fatal is None

    def _update_ready(self) -> None:
        self.metrics.ready.set(1 if self.is_ready else 0)

    # -- request validation ----------------------------------------------------------------

    def require_ready(self) -> None:
        if self.fatal is not None:
            raise ApiError(503, f"the server failed to start: {self.fatal}")
        if not self.ready:
            raise ApiError(
                503,
                "the server is still loading its models; retry shortly",
                {"Retry-After": RETRY_AFTER_S},
            )

    def model(self, name: str | None, version: str | None = None) -> ModelInfo:
        """A served model (404 for unknown names or versions); None: the default model."""
        self.require_ready()
        models = self.engine.models
        if name is None:
            return next(iter(models.values()))
        info = models.get(name)
        if info is None:
            raise ApiError(404, f"unknown model {name!r}; served: {', '.join(models)}")
        if version is not None and version != info.version:
            raise ApiError(
                404, f"model {name!r} has no version {version!r}; served: {info.version}"
            )
        return info

    @property
    def default_precision(self) -> str:
        """The precision of requests that name none: MOE_DEFAULT_PRECISION where loaded
        (or auto), else the first loaded."""
        default = self.settings.default_precision
        return default if default in (*self.engine.precisions, AUTO) else self.engine.precisions[0]

    def target(
        self,
        info: ModelInfo,
        precision: str | None,
        top_k: int | None,
        k: Any,
        dual_module: Any = None,
    ) -> tuple[Target, int]:
        """Check precision, top_k, k and dual_module (a comma list of layers, "all" or
        "none"; None: MOE_DUAL_MODULE) against the model: (target, top_k)."""
        served = self.engine.precisions
        if precision is None:
            precision = self.default_precision
        if precision not in (*served, AUTO):
            if precision in PRECISIONS:
                raise ApiError(
                    400,
                    f"precision {precision!r} is not enabled on this server; "
                    f"enabled: {', '.join(served)} (or auto)",
                )
            raise ApiError(
                400, f"unknown precision {precision!r}; supported: {', '.join(served)} or auto"
            )
        if top_k is None:
            top_k = min(5, info.num_classes)
        if (
            isinstance(top_k, bool)
            or not isinstance(top_k, int)
            or not 1 <= top_k <= info.num_classes
        ):
            raise ApiError(
                400,
                f"top_k must be an integer between 1 and {info.num_classes} "
                f"(the model's classes), got {top_k!r}",
            )
        try:
            k = AUTO if k == AUTO and info.mixture is not None else check_k(info.mixture, k)
        except SpecError as exc:
            raise ApiError(400, f"model {info.name!r}: {exc}") from exc
        if dual_module is not None and not isinstance(dual_module, str):
            raise ApiError(400, f"dual_module must be a comma list of layers, got {dual_module!r}")
        try:
            request = None if dual_module is None else parse_dual_request(dual_module)
            dual = self.engine.dual_target(info.name, request)
        except DualModuleError as exc:
            raise ApiError(400, str(exc)) from exc
        return Target(info, precision, k, dual), top_k

    # -- inference ---------------------------------------------------------------------------

    def deadline(self, started: float | None, timeout_s: float | None = None) -> float:
        """The request's deadline (time.monotonic): the server's timeout, or a shorter one
        the client asked for."""
        limit = self.settings.request_timeout_s
        if timeout_s is not None:
            limit = min(limit, timeout_s)
        return (started if started is not None else time.monotonic()) + limit

    @staticmethod
    def client_timeout_s(name: str, value: Any, unit_s: float) -> float | None:
        """A client's deadline parameter (v1 `deadline_ms`, v2 `deadline_ms` or `timeout`
        in microseconds) in seconds; a 400 unless a positive number."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ApiError(400, f"{name} must be a positive number, got {value!r}")
        return float(value) * unit_s

    def check_batch_size(self, n: int, what: str) -> None:
        """The one check of a request's image count (v1 files, v2 tensor rows)."""
        if n > self.settings.max_batch_size:
            raise ApiError(
                400,
                f"{what}: batch of {n}, at most "
                f"{self.settings.max_batch_size} (setting MOE_MAX_BATCH_SIZE)",
            )

    def admit(self, target: Target, images: int, deadline: float, decoded: bool = False) -> None:
        """Refuse at once (503) a request whose deadline the work ahead of it already
        rules out, before its images cost any decoding or device time: under overload
        the server then answers what it can in time instead of running every request
        late (a queue of doomed requests would make every request late). `decoded`:
        its input is ready (no decode-pool wait ahead of it)."""
        ready = time.monotonic() if decoded else self.decode_pool.ready_at()
        late = self.predicted_finish(target.key, images, ready) - deadline
        if late > 0:
            self.metrics.shed.labels(target.model.name).inc()
            raise ApiError(
                503,
                f"server busy: the work queued ahead would end about {late * 1e3:.0f} ms "
                "after this request's deadline; retry later",
                {"Retry-After": RETRY_AFTER_S},
            )

    def predicted_finish(self, key: BatchKey, images: int, ready: float) -> float:
        """When `images` more for `key`, their input ready at `ready`, would be done at
        best: after the batches on the device and every queued image (each key's run
        the fastest way it allows), and no sooner than their own batch after `ready`."""
        queued = self.batcher.queued_images()
        queued[key] = queued.get(key, 0) + images
        size = self.settings.max_batch_size
        work = sum(math.ceil(n / size) * self._fastest(k, min(n, size)) for k, n in queued.items())
        device = time.monotonic() + self.scheduler.busy_for() + work
        return max(device, ready + self._fastest(key, images))

    def _candidates(self, key: BatchKey) -> list[tuple[str, int | None]]:
        """What a batch for `key` may run at, most accurate first: "auto" opens every
        loaded precision (a mixture's k: every k up to the model's own)."""
        model, precision, k = key[:3]
        precisions = self.scheduler.order if precision == AUTO else [precision]
        mixture = self.engine.models[model].mixture
        ks = range(mixture.k, 0, -1) if k == AUTO and mixture else [k]
        return [(p, kk) for p in precisions for kk in ks]

    def _fastest(self, key: BatchKey, size: int) -> float:
        """Predicted device seconds of a batch for `key` run its fastest allowed way (0
        before the warm-up timings exist)."""
        return self.scheduler.fastest(key[0], self._candidates(key), size) or 0.0

    def _too_late(self, key: BatchKey, size: int, deadline: float) -> bool:
        """The batcher's check as it takes a job: the batch would end after `deadline`
        even at its fastest, behind what is on the device."""
        return time.monotonic() + self.scheduler.busy_for() + self._fastest(key, size) > deadline

    async def infer(self, target: Target, batch: np.ndarray, deadline: float) -> JobResult:
        """Queue a batch of preprocessed images (checked by `check_batch_size`) and
        wait for its result."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(504, "request deadline passed before inference")
        self.admit(target, len(batch), deadline, decoded=True)
        try:
            future = self.batcher.submit(target.key, batch, deadline)
        except QueueFull as exc:
            raise ApiError(
                503, f"server busy: {exc}; retry later", {"Retry-After": RETRY_AFTER_S}
            ) from exc
        except BatcherClosed as exc:
            raise ApiError(
                503, "the server is shutting down", {"Retry-After": RETRY_AFTER_S}
            ) from exc
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), remaining)
        except (TimeoutError, DeadlineExceeded) as exc:
            raise ApiError(
                504,
                "request deadline exceeded (the request's deadline_ms or timeout, at most "
                f"{self.settings.request_timeout_s:g} s: setting MOE_REQUEST_TIMEOUT_S)",
            ) from exc

    # -- device-thread callbacks -------------------------------------------------------------

    def _run_batch(self, key: BatchKey, batch: np.ndarray, pressure: Pressure) -> Pending:
        model, precision, k, dual = key
        n = len(batch)
        if AUTO in (precision, k):
            # Behind this batch: the images queued, and the requests still being decoded
            # (under a burst the decode pool holds what the queue will hold next).
            decoding, decoding_deadline = self.decode_pool.on_the_way()
            precision, k = self.scheduler.choose(
                model,
                self._candidates(key),
                n,
                pressure.deadline,
                pressure.backlog + decoding,
                min(pressure.backlog_deadline, decoding_deadline),
            )
        pending = self.engine.submit(model, precision, k, batch, dual)
        predicted = self.scheduler.queued(model, precision, k, n)

        def wait() -> InferResult:
            try:
                result = pending()
            finally:
                self.scheduler.landed()
            result.predicted_s = predicted
            return result

        return wait

    def _on_batch(
        self, key: BatchKey, jobs: list[Job], result: InferResult | None, compute: float
    ) -> None:
        model, precision, k = key[:3]
        m = self.metrics
        images = sum(len(job.inputs) for job in jobs)
        if result is not None:  # what it ran at: "auto" chose
            if AUTO in (precision, k):
                label = "" if result.k is None else str(result.k)
                m.auto_choices.labels(model, result.precision, label).inc(images)
            precision, k = result.precision, result.k
            if result.predicted_s:
                m.prediction_ratio.labels(model, precision).observe(compute / result.predicted_s)
                self.scheduler.measured(result.predicted_s, compute)
        m.batch_size.labels(model, precision).observe(images)
        m.compute.labels(model, precision).observe(compute)
        now = time.monotonic()
        for job in jobs:
            m.queue_wait.labels(model, precision).observe(max(0.0, now - compute - job.enqueued))
        if result is not None and result.routing is not None:
            counts: dict[int, int] = {}
            for choices in result.routing:
                for choice in choices:
                    counts[choice.expert] = counts.get(choice.expert, 0) + 1
            for expert, count in counts.items():
                m.expert_images.labels(model, str(expert)).inc(count)

    def _on_depth(self, key: BatchKey, depth: int) -> None:
        self.metrics.queue_depth.labels(key[0], key[1]).set(depth)
