"""`moe-alexnet serve`: settings, fail-fast checks, uvicorn, graceful drain.

Startup order: settings (environment, then flags) are validated, the device selector
is resolved and the model names checked against the repository, all before anything
listens: a typo exits at once with one line instead of a server that never becomes
ready. Loading and warm-up then happen in the app's lifespan (see service/state.py).

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
from pydantic import ValidationError

from service.access_log import configure_logging
from service.settings import Settings

FLAGS = ("host", "port", "models", "precisions", "device", "random_weights", "seed", "log_level")


class ServeError(Exception):
    """A reason not to serve, in one line (the command prints it and exits 1)."""


def load_settings(args: argparse.Namespace) -> Settings:
    """Environment (MOE_*) overridden by the flags given."""
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None
    }
    if getattr(args, "models_dir", None) is not None:
        overrides["model_repository"] = args.models_dir
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ServeError(_one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"MOE_{field.upper()} (--{field.replace('_', '-')}): {err.get('msg')}")
    return "invalid setting " + "; ".join(parts)


def check(settings: Settings) -> list[str]:
    """Everything that can be checked without loading weights; returns the model names."""
    from kernels.runtime import select
    from service.engine import check_models, check_precisions

    try:
        check_precisions(settings.precisions)
    except ValueError as exc:
        raise ServeError(str(exc)) from exc
    select(settings.device)  # DeviceError names the devices there are
    return check_models(settings)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with readiness turned false as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, on_signal: Any) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_signal()
        super().handle_exit(sig, frame)


def serve(args: argparse.Namespace) -> int:
    from service.app import create_app

    settings = load_settings(args)
    check(settings)
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
        raise ServeError(f"startup failed: {state.fatal}")
    if not server.started:
        raise ServeError(f"could not start the server on {settings.host}:{settings.port}")
    return 0
