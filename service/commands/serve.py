"""`moe-alexnet serve`: settings, fail-fast checks, uvicorn, graceful drain.

Startup order: settings (environment, then flags) are validated, the device selector
is resolved and the model names checked against the repository, all before anything
listens: a typo exits at once with one line instead of a server that never becomes
ready. Loading and warm-up then happen in the app's lifespan (service/http/state.py).

Shutdown: uvicorn installs SIGTERM/SIGINT handlers with `signal.signal` in the main
thread, so the process also stops on SIGTERM as PID 1 in a container (where signals
without a handler are ignored). Our handler first turns readiness false, then uvicorn
stops accepting connections, lets in-flight requests finish (at most
drain_timeout_s) and runs the lifespan shutdown, which completes queued batches.
"""

from __future__ import annotations

import argparse
from types import FrameType
from typing import Any

import uvicorn

from kernels.devices import select
from service.commands import args as common
from service.failures import UsageError
from service.http.access_log import configure_logging
from service.http.app import create_app
from service.http.engine import check_models

HELP = "serve the models over HTTP (v1 JSON and KServe v2 APIs)"
FLAGS = (
    "host",
    "port",
    "models",
    "precisions",
    "dual_module",
    "device",
    "random_weights",
    "seed",
    "log_level",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="bind address (default: MOE_HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: MOE_PORT or 8000)")
    p.add_argument(
        "--models",
        type=common.csv(str),
        default=None,
        help="comma list of models (default: MOE_MODELS, else every model in the repository)",
    )
    p.add_argument(
        "--precisions",
        type=common.csv(str),
        default=None,
        help="comma list of precisions (default: MOE_PRECISIONS or fp32)",
    )
    common.dual_module_arg(p)
    common.source_args(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        default=None,
        help="serve built-in architectures (alexnet, caffenet) on seeded random "
        "weights (default models: MOE_DEFAULT_MODEL)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for --random-weights")
    p.add_argument("--log-level", default=None, help="default: MOE_LOG_LEVEL or info")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with readiness turned false as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, on_signal: Any) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_signal()
        super().handle_exit(sig, frame)


def run(args: argparse.Namespace) -> int:
    """Settings, then the device and the model names, are checked before anything
    listens (see the module docstring)."""
    settings = common.settings(args, FLAGS)
    select(settings.device)  # a DeviceError names the devices there are
    check_models(settings)
    configure_logging(settings.log_level)
    app = create_app(settings)
    state = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        lifespan="on",
        server_header=False,
    )
    server = DrainingServer(config, state.begin_drain)

    def on_fatal(message: str) -> None:
        server.should_exit = True  # polled by uvicorn's main loop; safe from any thread

    state.on_fatal = on_fatal
    server.run()
    if state.fatal is not None:
        raise UsageError(f"startup failed: {state.fatal}")
    if not server.started:
        raise UsageError(f"could not start the server on {settings.host}:{settings.port}")
    return 0
