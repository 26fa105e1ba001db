"""scripts/loadtest.py against a live server (a subprocess on 127.0.0.1): its lean
keep-alive client counts every answer, errors by status included, reads the server's
figures, and refuses any address but loopback."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import script, write_split
from tests.service.servers import server

pytestmark = pytest.mark.timeout(300)


def test_load_test_script_against_a_live_server(shared_tiny_repo, tmp_path, monkeypatch):
    """scripts/loadtest.py (its lean keep-alive client): a bounded run on loopback
    counts every answer, errors by status included, and reads the server's figures."""
    pytest.importorskip("skimage.data", reason="scikit-image is not installed (photos)")
    loadtest = script("loadtest")
    with server(shared_tiny_repo, log=tmp_path / "server.log", max_batch_size="4") as srv:
        argv = [
            "--url",
            srv.url,
            "--server-pid",
            str(srv.server_pid()),
            "-n",
            "40",
            "-c",
            "4",
            "--json",
        ]
        ok = loadtest.run_report(*loadtest.parse_args(argv))
        missing = loadtest.run_report(*loadtest.parse_args([*argv, "--model", "nope", "-n", "6"]))
        # Open loop: Poisson arrivals at 40/s with a deadline each, 2 in flight at most.
        poisson = [*argv[:4], "-n", "60", "--rate", "40", "--deadline-ms", "5000", "--json"]
        poisson += ["--connections", "2"]
        opened = loadtest.run_report(*loadtest.parse_args(poisson))
        # Two phases (a burst, then light load), the precision asked for explicitly.
        phased = [*argv[:4], "--rate", "60,20", "--duration", "0.5,1", "--precision", "fp32"]
        phases = loadtest.run_report(*loadtest.parse_args([*phased, "--json"]))
        # One connection, arrivals far faster than answers, 20 ms deadlines: requests
        # that waited past theirs for the connection are counted, never sent.
        queued = [*argv[:4], "-n", "30", "--rate", "1000", "--deadline-ms", "20"]
        queued = loadtest.run_report(*loadtest.parse_args([*queued, "--connections", "1"]))
        # In-domain images for a Fashion-MNIST model: the test split's, as PNG.
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
        write_split(tmp_path, "test", images, np.array([0, 1, 2], np.uint8))
        monkeypatch.setenv("MOE_FASHION_MNIST_DIR", str(tmp_path))
        fashion = [*argv[:4], "-n", "9", "-c", "3", "--images", "fashion-mnist", "--json"]
        grey = loadtest.run_report(*loadtest.parse_args(fashion))
        monkeypatch.setenv("MOE_FASHION_MNIST_DIR", str(tmp_path / "absent"))
        with pytest.raises(SystemExit, match="Fashion-MNIST directory"):
            loadtest.run_report(*loadtest.parse_args(fashion))
    assert ok["requests"] == ok["ok"] == 40 and ok["errors"] == 0
    assert 1 <= ok["mean_batch_size"] <= 4 and ok["latency_ms_p50"] > 0
    assert ok["rss_mib_first_500"] > 0 and ok["server_cpu_ms_per_request"] > 0
    assert missing["errors_by_status"] == {"404": 6} and missing["ok"] == 0
    assert opened["mode"] == "open loop, Poisson 40/s" and opened["ok"] == 60
    assert 20 < opened["offered_rps"] < 80  # 60 exponential gaps of mean 25 ms
    assert opened["goodput_share"] == 1.0 and opened["answers_by_precision"] == {"fp32": 60}
    assert opened["latency_ms_p50"] <= opened["latency_ms_p95"] <= opened["latency_ms_p99"]
    first, second = phases["phases"]
    assert (first["rate"], first["duration_s"], second["rate"]) == (60, 0.5, 20)
    assert first["requests"] + second["requests"] == phases["requests"] == phases["ok"] > 20
    for phase in (first, second):
        assert phase["answers_by_precision"] == {"fp32": phase["requests"]}
        assert 0 < phase["last_arrival_s_by_precision"]["fp32"] < phase["duration_s"]
    assert grey["requests"] == grey["ok"] == 9 and grey["errors"] == 0
    expired = queued["errors_by_status"].get(loadtest.EXPIRED, 0)
    assert queued["requests"] == 30 and expired >= 1
    assert queued["ok"] + queued["errors"] == 30 and queued["goodput_share"] < 1
    k = loadtest.parse_args(["--model", "m", "--k", "auto", "--precision", "auto"])[0]
    assert loadtest.query_path(k) == "/v1/classify?model=m&precision=auto&k=auto"
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--rate", "10", "--connections", "0"])
    with pytest.raises(SystemExit, match="only loopback"):
        loadtest.run_report(*loadtest.parse_args(["--url", "http://192.0.2.1:8000", "-n", "1"]))
