"""Prometheus metrics of one server instance.

Each app gets its own `CollectorRegistry`: the default global registry would make two
apps in one process (every test, or a blue/green swap in one interpreter) collide on
metric names. Label values are bounded: routes are path templates, models and
precisions only those configured (unknown names are counted as "-"), so a client
cannot grow the series without limit.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Latency buckets from 1 ms (a tiny model, batch 1) to 60 s (a request that waited out
# a long queue on a slow device).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
UNKNOWN = "-"


class Metrics:
    """The server's metrics; `render()` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int = 8) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "moe_requests",
            "HTTP requests answered, by route template, model, precision and status code",
            ["route", "model", "precision", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "moe_request_duration_seconds",
            "Time from request received to response sent",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "moe_queue_wait_seconds",
            "Time a request waited in the batch queue",
            ["model", "precision"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "moe_compute_seconds",
            "Device time of one batch (all its images)",
            ["model", "precision"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram(
            "moe_batch_size",
            "Images per batch run on the device",
            ["model", "precision"],
            buckets=[b for b in batch_buckets if b <= max_batch_size],
            registry=r,
        )
        self.auto_choices = Counter(
            "moe_auto_precision_images",
            "Images asked at precision=auto or k=auto, by the precision and k they ran at",
            ["model", "precision", "k"],
            registry=r,
        )
        self.prediction_ratio = Histogram(
            "moe_latency_prediction_ratio",
            "A batch's device time over precision=auto's prediction of it (1: exact)",
            ["model", "precision"],
            buckets=[0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0],
            registry=r,
        )
        self.shed = Counter(
            "moe_shed_requests",
            "Requests refused (503) before they were queued: the work ahead of them would "
            "have ended after their deadline",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge("moe_in_flight_requests", "Requests being handled", registry=r)
        self.queue_depth = Gauge(
            "moe_queue_depth",
            "Requests waiting in the batch queue",
            ["model", "precision"],
            registry=r,
        )
        self.expert_images = Counter(
            "moe_expert_images",
            "Images routed to each expert of a mixture-of-experts model",
            ["model", "expert"],
            registry=r,
        )
        self.weight_bytes = Gauge(
            "moe_resident_weight_bytes",
            "Bytes of weights resident on the device (with MOE_DUAL_MODULE's little modules)",
            ["model", "precision"],
            registry=r,
        )
        self.ready = Gauge(
            "moe_ready",
            "1 when every configured model is loaded and warm, and the server is not draining",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
