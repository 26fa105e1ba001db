"""Shared pieces of the service tests: tiny models, images, in-process apps and real
uvicorn servers in subprocesses (127.0.0.1 only, always stopped).

Also runnable: `python -m tests.service_fixtures slow DELAY_S -- SERVE_ARGS...` serves
like `moe-alexnet serve` but every batch takes DELAY_S longer (queue-full and drain
tests need requests that stay in flight).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from experts.model.architectures import random_weights
from experts.model.repository import Repository

ROOT = Path(__file__).resolve().parent.parent

TINY: dict[str, Any] = {
    "format": 1,
    "name": "tiny",
    "version": "1",
    "input": {
        "shape": [3, 16, 16],
        "layout": "NCHW",
        "color": "RGB",
        "resize": None,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    },
    "labels": ["cat", "dog", "fish"],
    "layers": [
        {"name": "conv1", "op": "conv", "out_channels": 8, "kernel": 3, "padding": 1, "relu": True},
        {"name": "pool1", "op": "maxpool", "kernel": 2, "stride": 2},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 3},
    ],
}

# A mixture of experts of the same input size: 4 experts, top-2 by default.
TINY_MOE: dict[str, Any] = {
    "format": 1,
    "name": "tiny-moe",
    "version": "3",
    "kind": "mixture",
    "input": dict(TINY["input"]),
    "labels": ["cat", "dog", "fish"],
    "stem": [
        {"name": "c1", "op": "conv", "out_channels": 6, "kernel": 3, "relu": True},
        {"name": "p1", "op": "maxpool", "kernel": 2, "stride": 2},
    ],
    "gate": [{"name": "gf", "op": "flatten"}, {"name": "g", "op": "linear", "out_features": 4}],
    "expert": [
        {"name": "c2", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "relu": True},
        {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 5, "relu": True},
    ],
    "experts": 4,
    "k": 2,
    "head": [{"name": "out", "op": "linear", "out_features": 3}],
}


def make_repo(root: Path, mixture: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Repository(root).save("tiny", TINY, random_weights(TINY, seed=1))
    if mixture:
        Repository(root).save("tiny-moe", TINY_MOE, random_weights(TINY_MOE, seed=2))
    return root


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def random_rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def photo_jpeg(name: str = "astronaut", size: int = 128) -> bytes:
    """A real photo from scikit-image, downscaled (tests skip without scikit-image)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def wait_loaded(app: Any, timeout: float = 120.0) -> None:
    assert app.state.service.wait_loaded(timeout), "models did not load in time"


# -- real servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server in a subprocess on 127.0.0.1; `stop()` (or the context) ends it."""

    def __init__(
        self, args: list[str], env: dict[str, str], slow_s: float = 0.0, wrap: list[str] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        if slow_s:
            cmd = [sys.executable, "-m", "tests.service_fixtures", "slow", str(slow_s), "--", *argv]
        else:
            cmd = [sys.executable, "-m", "service.commands.main", "serve", *argv]
        cmd = [*wrap, *cmd]
        self.log_path = Path(env.get("MOE_TEST_LOG", os.devnull))
        self.log = open(self.log_path, "wb") if self.log_path != Path(os.devnull) else None
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self.log or subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s: {self.logs()}")

    def server_pid(self) -> int:
        """The server's pid: the process started, or its child when wrapped (unshare)."""
        if self.proc.args[0] == sys.executable:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def logs(self) -> str:
        if self.log is None:
            return "(no log)"
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            if self.log is not None:
                self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server(
    repo: Path,
    *args: str,
    slow_s: float = 0.0,
    log: Path | None = None,
    wrap: list[str] = (),
    **env: str,
) -> Iterator[ServerProcess]:
    """A ready server on the tiny repository; MOE_* settings as keyword arguments."""
    environ = {"MOE_MODEL_REPOSITORY": str(repo), **{f"MOE_{k.upper()}": v for k, v in env.items()}}
    if log is not None:
        environ["MOE_TEST_LOG"] = str(log)
    proc = ServerProcess(list(args), environ, slow_s, list(wrap))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


# -- the slow server -----------------------------------------------------------------------


def _slow_main(argv: list[str]) -> int:
    """Serve with every batch DELAY_S slower (after warm-up)."""
    from service.http import engine
    from service.commands.main import main

    delay = float(argv[0])
    serve_args = argv[argv.index("--") + 1 :]
    submit = engine.Engine.submit

    def slow_submit(self: Any, *args: Any) -> Any:
        time.sleep(delay)
        return submit(self, *args)

    engine.Engine.submit = slow_submit  # type: ignore[method-assign]
    return main(["serve", *serve_args])


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "slow":
        sys.exit(_slow_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.service_fixtures slow DELAY_S -- SERVE_ARGS...")
