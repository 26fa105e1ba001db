"""The HTTP service: `create_app(settings)` builds one FastAPI app.

No module-level state: every app owns its settings, metrics registry, engine, batcher
and device thread (service/http/state.py), created here and started in the lifespan, so
importing this module opens no device and several apps can live in one process
(the tests make many). Routes live in routes_v1 (the simple JSON API), routes_v2 (the
Open Inference Protocol), routes_metrics and routes_pages (the demo page at /, ReDoc).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.http import errors, routes_metrics, routes_pages, routes_v1, routes_v2
from service.http.access_log import RequestMiddleware
from service.http.engine import Engine
from service.http.state import ServiceState
from service.settings import Settings

DESCRIPTION = """\
Image classification with AlexNet-family networks whose every layer runs as OpenCL
kernels. Two APIs over the same dynamic batcher:

* **/v1/classify**: post an image (raw `image/*` body, or multipart `image` fields for
  a batch) and get the top-k labels with scores.
* **/v2/...**: the Open Inference Protocol (KServe v2) with Triton's binary tensor data
  and classification extensions: tritonclient works unchanged.

Errors are `{"error": "message"}` with a 4xx status (503 with Retry-After when busy,
loading or draining; 504 past the request deadline).
"""


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """A new app; `engine` replaces the OpenCL engine (tests pass a stub)."""
    settings = settings if settings is not None else Settings()
    state = ServiceState(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()  # loads and warms up on the device thread; /v2/health/ready tells when
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop, settings.drain_timeout_s)

    # FastAPIOffline: /docs from assets in the package, not a CDN, so it renders where
    # the server has no internet; /redoc is routes_pages's (the same assets).
    app = FastAPIOffline(
        redoc_url=None,
        title="moe-alexnet",
        description=DESCRIPTION,
        version=routes_v2._version(),
        lifespan=lifespan,
    )
    app.state.service = state
    errors.install(app)
    app.add_middleware(
        RequestMiddleware, metrics=state.metrics, max_body_bytes=settings.max_body_bytes
    )
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_metrics.router)
    app.include_router(routes_pages.router)
    app.mount("/static", routes_pages.assets, name="static")
    return app
