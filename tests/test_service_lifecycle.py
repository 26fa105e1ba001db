"""Liveness, readiness, draining and startup failures in-process; `moe-alexnet serve`
settings errors (one line on stderr, non-zero exit, nothing started)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service.commands.main import main
from service.http.engine import Engine
from service.settings import Settings, default_decode_workers
from tests.service_fixtures import encode, make_repo, random_rgb, wait_loaded

PNG = encode(random_rgb())


class GatedEngine(Engine):
    """The real engine, whose loading waits until the test opens the gate."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate = threading.Event()

    def load(self) -> None:
        assert self.gate.wait(60)
        super().load()


def test_ready_only_after_warm_up_and_not_while_draining(tmp_path):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    settings = Settings(model_repository=make_repo(tmp_path / "models"), max_batch_size=2)
    engine = GatedEngine(settings)
    app = create_app(settings, engine=engine)
    with TestClient(app) as client:
        # Loading: live, not ready, inference refused with Retry-After.
        assert client.get("/v2/health/live").status_code == 200
        r = client.get("/v2/health/ready")
        assert r.status_code == 400 and r.json() == {"ready": False}
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "loading" in r.json()["error"]
        assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": False}
        assert client.get("/v2/models/tiny").status_code == 503
        assert "moe_ready 0.0" in client.get("/metrics").text

        engine.gate.set()
        wait_loaded(app)
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/tiny/ready").status_code == 200
        assert "moe_ready 1.0" in client.get("/metrics").text

        # Draining (what SIGTERM does first): not ready, but requests still complete.
        app.state.service.begin_drain()
        assert client.get("/v2/health/ready").status_code == 400
        assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": False}
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert "moe_ready 0.0" in client.get("/metrics").text
    assert not app.state.service._thread.is_alive()  # the lifespan stopped the device thread


def test_a_model_that_fails_to_load_never_becomes_ready(tmp_path):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    root = make_repo(tmp_path / "models")
    (root / "tiny" / "weights.safetensors").write_bytes(b"garbage")
    app = create_app(Settings(model_repository=root))
    with TestClient(app) as client:
        wait_loaded(app)
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 400
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 503 and "failed to start" in r.json()["error"]
        assert "tiny" in app.state.service.fatal


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("MOE_MODELS", "tiny, other")
    monkeypatch.setenv("MOE_PRECISIONS", "fp32")
    monkeypatch.setenv("MOE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MOE_MAX_QUEUE_DELAY_MS", "2.5")
    monkeypatch.setenv("MOE_LOG_LEVEL", "WARNING")
    s = Settings()
    assert s.models == ["tiny", "other"] and s.precisions == ["fp32"]
    assert s.max_batch_size == 16 and s.max_queue_delay_ms == 2.5 and s.log_level == "warning"
    assert (s.max_queue_size, s.max_body_bytes, s.drain_timeout_s) == (64, 10 * 2**20, 30.0)
    monkeypatch.setenv("MOE_DECODE_WORKERS", "3")
    assert Settings().decode_workers == 3


@pytest.mark.parametrize("cpus, workers", [(None, 2), (1, 1), (2, 2), (3, 3), (64, 4)])
def test_decode_workers_default_to_the_cores_up_to_four(cpus, workers):
    assert default_decode_workers(cpus) == workers


def serve_error(capsys, *argv: str) -> str:
    code = main(["serve", "--host", "127.0.0.1", "--port", "0", *argv])
    _, err = capsys.readouterr()
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("moe-alexnet: error: ")
    return lines[0]


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    root = make_repo(tmp_path / "models")
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(root))
    for name in ("MOE_MODELS", "MOE_PRECISIONS", "MOE_DEVICE", "MOE_MAX_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return root


def test_serve_refuses_bad_settings_in_one_line(capsys, repo, monkeypatch, tmp_path):
    assert "no OpenCL device matches" in serve_error(capsys, "--device", "no-such-device")
    assert "unknown model 'nope'" in serve_error(capsys, "--models", "nope")
    assert "--random-weights" in serve_error(capsys, "--models", "alexnet")
    assert "unknown precision fp64" in serve_error(capsys, "--precisions", "fp64")
    monkeypatch.setenv("MOE_PRECISIONS", "int3")
    assert "unknown precision int3" in serve_error(capsys)
    monkeypatch.delenv("MOE_PRECISIONS")
    monkeypatch.setenv("MOE_MAX_BATCH_SIZE", "0")
    assert "MOE_MAX_BATCH_SIZE" in serve_error(capsys)
    monkeypatch.delenv("MOE_MAX_BATCH_SIZE")
    monkeypatch.setenv("MOE_DECODE_WORKERS", "0")
    assert "MOE_DECODE_WORKERS" in serve_error(capsys)
    monkeypatch.delenv("MOE_DECODE_WORKERS")
    assert "MOE_LOG_LEVEL" in serve_error(capsys, "--log-level", "loud")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = serve_error(capsys, "--models-dir", str(empty))
    assert "no models to serve" in line and "--random-weights" in line


class SlowEngine(Engine):
    """The real engine with a settable extra delay per batch."""

    delay = 0.0

    def submit(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().submit(*args, **kwargs)


def test_deadline_gives_504_and_the_server_recovers(tmp_path):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    settings = Settings(
        model_repository=make_repo(tmp_path / "models"), request_timeout_s=0.3, max_batch_size=1
    )
    engine = SlowEngine(settings)
    app = create_app(settings, engine=engine)
    with TestClient(app) as client:
        wait_loaded(app)
        engine.delay = 0.6
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 504 and "MOE_REQUEST_TIMEOUT_S" in r.json()["error"]
        # A client's shorter v2 timeout (microseconds, as tritonclient sends it) applies too.
        engine.delay = 0.15
        doc = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 768}
            ],
            "parameters": {"timeout": 50_000},
        }
        assert client.post("/v2/models/tiny/infer", json=doc).status_code == 504
        engine.delay = 0.0
        time.sleep(0.7)  # the timed-out batches finish on the device thread
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
