"""The service's state in-process (service/http/state.py, under FastAPI's TestClient):
live at once, ready only after warm-up and not while draining, a model that fails to
load never ready, and a request past its deadline answered 504 while the server
recovers."""

from __future__ import annotations

import threading
import time

from service.http.engine import Engine
from service.settings import Settings
from tests.helpers import encode, random_rgb, wait_loaded

PNG = encode(random_rgb())


class GatedEngine(Engine):
    """The real engine, whose loading waits until the test opens the gate."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate = threading.Event()

    def load(self) -> None:
        assert self.gate.wait(60)
        super().load()


def test_ready_only_after_warm_up_and_not_while_draining(tiny_repo):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    settings = Settings(model_repository=tiny_repo, max_batch_size=2)
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


def test_a_model_that_fails_to_load_never_becomes_ready(tiny_repo):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    root = tiny_repo
    (root / "tiny" / "weights.safetensors").write_bytes(b"garbage")
    app = create_app(Settings(model_repository=root))
    with TestClient(app) as client:
        wait_loaded(app)
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 400
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 503 and "failed to start" in r.json()["error"]
        assert "tiny" in app.state.service.fatal


class SlowEngine(Engine):
    """The real engine with a settable extra delay per batch."""

    delay = 0.0

    def submit(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().submit(*args, **kwargs)


def test_deadline_gives_504_and_the_server_recovers(tiny_repo):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    settings = Settings(model_repository=tiny_repo, request_timeout_s=0.3, max_batch_size=1)
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
        doc["parameters"] = {"deadline_ms": 50}  # the same, in milliseconds
        assert client.post("/v2/models/tiny/infer", json=doc).status_code == 504
        r = client.post(  # v1's deadline_ms
            "/v1/classify",
            content=PNG,
            headers={"content-type": "image/png"},
            params={"deadline_ms": 50},
        )
        assert r.status_code == 504 and "deadline_ms" in r.json()["error"]
        engine.delay = 0.0
        time.sleep(0.7)  # the timed-out batches finish on the device thread
        r = client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
