"""Real servers for the tests (not a test module): `moe-alexnet serve` under uvicorn in a
subprocess on 127.0.0.1, always stopped.

Also runnable: `python -m tests.service.servers slow DELAY_S -- SERVE_ARGS...` serves
like `moe-alexnet serve` but every batch takes DELAY_S longer (queue-full and drain
tests need requests that stay in flight).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, free_port


class ServerProcess:
    """A server in a subprocess on 127.0.0.1; `stop()` (or the context) ends it."""

    def __init__(
        self, args: list[str], env: dict[str, str], slow_s: float = 0.0, wrap: list[str] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        if slow_s:
            cmd = [sys.executable, "-m", "tests.service.servers", "slow", str(slow_s), "--", *argv]
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
    from service.commands.main import main
    from service.http import engine

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
    sys.exit("usage: python -m tests.service.servers slow DELAY_S -- SERVE_ARGS...")
