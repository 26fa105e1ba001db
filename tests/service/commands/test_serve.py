"""`moe-alexnet serve` (service/commands/serve.py). In-process: bad settings refused in
one line on stderr with a non-zero exit, nothing started. Real servers, under uvicorn
in a subprocess on 127.0.0.1: SIGTERM with requests in flight loses none (also as PID 1
of a PID namespace), a full queue answers 503 with Retry-After, a model that cannot
load ends the process with status 1 and one line, and tritonclient's HTTP client, with
its defaults (binary tensors both ways), gets the same probabilities as /v1/classify.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.commands.main import main
from service.images import decode_image, preprocess
from tests.helpers import photo_jpeg
from tests.service.servers import server

pytestmark = pytest.mark.timeout(300)

# -- settings refused in-process -----------------------------------------------------------


def serve_error(capsys, *argv: str) -> str:
    code = main(["serve", "--host", "127.0.0.1", "--port", "0", *argv])
    _, err = capsys.readouterr()
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("moe-alexnet: error: ")
    return lines[0]


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


# -- real servers --------------------------------------------------------------------------


def post_image(url: str, data: bytes, timeout: float = 60.0) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify", content=data, headers={"content-type": "image/jpeg"}, timeout=timeout
    )


def concurrently(n: int, fn) -> tuple[list, list[threading.Thread]]:
    results: list = [None] * n

    def worker(i: int) -> None:
        try:
            results[i] = fn()
        except Exception as exc:  # recorded, asserted by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return results, threads


def metric(url: str, pattern: str) -> float:
    match = re.search(pattern + r" (\S+)", httpx.get(f"{url}/metrics", timeout=10).text)
    return float(match.group(1)) if match else 0.0


def wait_handling(url: str, requests: int, timeout: float = 30.0) -> None:
    """Until the server handles `requests` at once (its /metrics scrape not counted):
    every client is connected, so none can be refused by a shutdown that follows."""
    deadline = time.monotonic() + timeout
    while metric(url, r"\nmoe_in_flight_requests") < requests + 1:
        assert time.monotonic() < deadline, "requests did not arrive"
        time.sleep(0.05)


def wait_queued(url: str, depth: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(url, r'moe_queue_depth\{model="tiny",precision="fp32"\}') < depth:
        assert time.monotonic() < deadline, "requests did not queue up"
        time.sleep(0.05)


def test_tritonclient_http_matches_v1(shared_tiny_repo, tmp_path, tiny_meta):
    httpclient = pytest.importorskip(
        "tritonclient.http", reason="tritonclient[http] is not installed"
    )
    from tritonclient.utils import InferenceServerException

    photo = photo_jpeg("astronaut")
    with server(shared_tiny_repo, log=tmp_path / "server.log") as srv:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("tiny")
            meta = client.get_model_metadata("tiny")
            assert meta["inputs"][0] == {
                "name": "input",
                "datatype": "FP32",
                "shape": [-1, 3, 16, 16],
            }
            assert "binary_tensor_data" in client.get_server_metadata()["extensions"]

            image = httpclient.InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([photo], dtype=np.object_))
            result = client.infer("tiny", [image], request_id="r1")
            probs = result.as_numpy("probabilities")
            assert probs.shape == (1, 3) and probs.dtype == np.float32
            assert result.get_response()["id"] == "r1"

            v1 = post_image(srv.url, photo).json()["predictions"]
            for p in v1:
                assert probs[0, p["index"]] == pytest.approx(p["score"], rel=1e-5)

            top = httpclient.InferRequestedOutput("probabilities", class_count=2)
            labels = client.infer("tiny", [image], outputs=[top]).as_numpy("probabilities")
            best = v1[0]
            assert labels.shape == (1, 2)
            assert labels[0, 0].decode().split(":")[1:] == [str(best["index"]), best["label"]]

            x = preprocess(decode_image(photo, "photo"), tiny_meta["input"])[np.newaxis]
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            again = client.infer("tiny", [tensor]).as_numpy("probabilities")
            np.testing.assert_allclose(again, probs, rtol=1e-5, atol=1e-7)

            with pytest.raises(InferenceServerException, match="unknown model"):
                client.infer("nope", [image])
            wrong = httpclient.InferInput("input", [1, 3, 8, 8], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
            with pytest.raises(InferenceServerException, match="shape"):
                client.infer("tiny", [wrong])
        finally:
            client.close()


def test_full_queue_answers_503_with_retry_after(shared_tiny_repo, tmp_path):
    photo = photo_jpeg("coffee")
    with server(
        shared_tiny_repo,
        slow_s=1.0,
        log=tmp_path / "server.log",
        max_queue_size="1",
        max_batch_size="1",
    ) as srv:
        # One request first, so that it runs (1 s) while the others arrive: one of them
        # waits in the queue of one, the rest are turned away.
        first, first_threads = concurrently(1, lambda: post_image(srv.url, photo))
        wait_handling(srv.url, 1)
        time.sleep(0.5)  # decoded and taken off the queue by the batcher
        results, threads = concurrently(4, lambda: post_image(srv.url, photo))
        for t in first_threads + threads:
            t.join(60)
        results = first + results
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) >= 2 and 503 in statuses, statuses
        for r in results:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert "busy" in r.json()["error"]
        assert post_image(srv.url, photo).status_code == 200  # and it recovers


def test_sigterm_drains_requests_in_flight(shared_tiny_repo, tmp_path):
    photo = photo_jpeg("rocket")
    log = tmp_path / "server.log"
    with server(
        shared_tiny_repo, slow_s=0.3, log=log, max_batch_size="1", drain_timeout_s="30"
    ) as srv:
        results, threads = concurrently(6, lambda: post_image(srv.url, photo))
        wait_queued(srv.url, 4)  # one running, the others queued (each takes 0.3 s)
        srv.terminate()
        for t in threads:
            t.join(60)
        assert [getattr(r, "status_code", r) for r in results] == [200] * 6
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        text = log.read_text()
        assert "draining" in text and "Traceback" not in text


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def test_sigterm_as_pid_1(shared_tiny_repo, tmp_path):
    """Signals without a handler never reach PID 1: the server must install its own."""
    if not _unshare_works():
        pytest.skip("cannot make a PID namespace here (unshare --pid needs privileges)")
    photo = photo_jpeg("coffee")
    wrap = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    with server(
        shared_tiny_repo, slow_s=0.3, log=tmp_path / "server.log", wrap=wrap, max_batch_size="1"
    ) as srv:
        pid = srv.server_pid()
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), status  # PID 1 inside
        results, threads = concurrently(3, lambda: post_image(srv.url, photo))
        wait_handling(srv.url, 3)  # one running, two waiting (each takes 0.3 s)
        os.kill(pid, signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert [getattr(r, "status_code", r) for r in results] == [200] * 3
        assert srv.proc.wait(30) == 0


def test_startup_failure_exits_non_zero_in_one_line(tiny_repo):
    """A model that passes the quick checks but cannot load: the server never becomes
    ready, and the process ends with status 1 and one error line on stderr."""
    root = tiny_repo
    (root / "tiny" / "weights.safetensors").write_bytes(b"garbage")
    env = {
        **os.environ,
        "MOE_MODEL_REPOSITORY": str(root),
        "MOE_PORT": "0",
        "MOE_HOST": "127.0.0.1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "service.commands.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("moe-alexnet: error: startup failed: model 'tiny'"), proc.stderr
