"""precision=auto (service/http/latency.py): the latency model's predictions and the
scheduler's choice (the most accurate precision predicted to meet the deadline after
the work queued ahead, else the fastest); and over HTTP, answers that name the
precision they ran at, counted in /metrics, with explicit precisions left alone."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from service.http.latency import BACKLOG_SHARE, LatencyModel, Scheduler
from service.settings import Settings
from tests.helpers import encode, fp32_request, random_rgb, serving


def _model(**seconds: float) -> LatencyModel:
    """Each precision's device time for a batch of 1, 2 and 4 (twice, four times)."""
    m = LatencyModel()
    for precision, s in seconds.items():
        for size in (1, 2, 4):
            m.observe(("m", precision, None), size, s * size)
    return m


def test_predictions():
    m = _model(fp32=0.010)
    assert m.predict(("m", "fp32", None), 2) == pytest.approx(0.020)
    assert m.predict(("m", "fp32", None), 3) == pytest.approx(0.040)  # runs padded to 4
    assert m.predict(("m", "fp32", None), 8) == pytest.approx(0.080)  # past the largest
    assert m.predict(("m", "int8", None), 1) is None
    m.observe(("m", "fp32", None), 1, 0.020)
    assert m.predict(("m", "fp32", None), 1) == pytest.approx(0.012)  # a moving average


def _auto(s: Scheduler) -> list[tuple[str, None]]:
    return [(p, None) for p in s.order]


def test_the_most_accurate_precision_that_meets_the_deadline():
    s = Scheduler(_model(fp32=0.040, fp16=0.025, int8=0.010), ["int8", "fp16", "fp32"])
    now = time.monotonic()
    assert s.choose("m", _auto(s), 1, now + 1.0) == ("fp32", None)
    assert s.choose("m", _auto(s), 1, now + 0.035) == ("fp16", None)  # 25 ms x 1.2 fits
    assert s.choose("m", _auto(s), 1, now + 0.028) == ("int8", None)  # fp16 without headroom
    assert s.choose("m", _auto(s), 1, now + 0.015) == ("int8", None)
    assert s.choose("m", _auto(s), 1, now + 0.001) == ("int8", None)  # none does: fastest
    # Work queued ahead counts: two fp32 batches (80 ms) leave room for int8 only.
    for _ in range(2):
        s.queued("m", "fp32", None, 1)
    assert s.choose("m", _auto(s), 1, time.monotonic() + 0.095) == ("int8", None)
    s.landed()
    s.landed()
    assert s.choose("m", _auto(s), 1, time.monotonic() + 0.095) == ("fp32", None)


def test_the_device_is_busy_for_what_is_left_of_its_batches():
    """The running batch counts only what it has left; those behind it count whole."""
    s = Scheduler(_model(fp32=0.040, int8=0.010), ["int8", "fp32"])
    assert s.busy_for() == 0.0
    assert s.fastest("m", _auto(s), 2) == pytest.approx(0.020)  # int8, 2 images
    assert s.fastest("m", [("fp64", None)], 1) is None
    s.queued("m", "fp32", None, 1)
    s.queued("m", "int8", None, 1)
    assert 0.030 < s.busy_for() <= 0.050
    time.sleep(0.03)
    assert 0.010 <= s.busy_for() <= 0.021  # 10 ms or less left of the first, then int8's
    s.landed()
    assert 0.0 <= s.busy_for() <= 0.010  # int8's, started when the first landed
    s.landed()
    assert s.busy_for() == 0.0


def test_k_auto_takes_the_largest_k_that_fits():
    m = LatencyModel()
    for k, seconds in ((1, 0.010), (2, 0.018), (3, 0.026)):
        m.observe(("moe", "fp32", k), 1, seconds)
    s = Scheduler(m, ["fp32"])
    ks = [("fp32", k) for k in (3, 2, 1)]
    now = time.monotonic()
    assert s.choose("moe", ks, 1, now + 1.0) == ("fp32", 3)
    assert s.choose("moe", ks, 1, now + 0.023) == ("fp32", 2)
    assert s.choose("moe", ks, 1, now + 0.0135) == ("fp32", 1)


def test_the_backlog_behind_counts_too():
    """Each batch fits its own deadline at fp32, but the 12 images queued behind it
    must be done within BACKLOG_SHARE of the time to theirs (the rest is kept for
    bursts): 12 x 40 ms at fp32 (x 1.2: 624 ms with the batch) fits in that share of
    2.1 s, fp16 (12 x 25 ms: 390 ms) of 1.3 s, int8 of less."""
    assert BACKLOG_SHARE == pytest.approx(0.3)
    s = Scheduler(_model(fp32=0.040, fp16=0.025, int8=0.010), ["int8", "fp16", "fp32"])
    now = time.monotonic()
    assert s.choose("m", _auto(s), 1, now + 0.1, 12, now + 2.1) == ("fp32", None)
    assert s.choose("m", _auto(s), 1, now + 0.1, 12, now + 1.5) == ("fp16", None)
    # All of the time would fit fp32 (624 ms in 700): the share fits int8 only.
    assert s.choose("m", _auto(s), 1, now + 0.1, 12, now + 0.7) == ("int8", None)
    assert s.choose("m", _auto(s), 1, now + 0.1) == ("fp32", None)  # nothing behind


def test_a_slower_machine_slows_every_prediction():
    """Batches at fp32 taking 3x their warm-up timing: int8's prediction (never run
    since) grows with them."""
    s = Scheduler(_model(fp32=0.040, int8=0.010), ["int8", "fp32"])
    for _ in range(20):
        s.measured(s.predict("m", "fp32", None, 1), 3 * 0.040)
    assert s.factor == pytest.approx(3.0, rel=0.01)
    assert s.predict("m", "int8", None, 1) == pytest.approx(0.030, rel=0.01)
    now = time.monotonic()
    assert s.choose("m", _auto(s), 1, now + 0.1) == ("int8", None)  # fp32: 120 ms now


def test_unknown_precisions_are_not_chosen_on_a_guess():
    s = Scheduler(_model(int8=0.010), ["fp32", "int8"])
    assert s.choose("m", _auto(s), 1, time.monotonic() + 1.0) == ("int8", None)  # fp32 untimed


@pytest.fixture(scope="module")
def client(shared_repo):
    settings = Settings(
        model_repository=shared_repo,
        models=["tiny", "tiny-moe"],
        precisions=["fp32", "int8"],
        default_precision="auto",
        max_batch_size=4,
        max_queue_delay_ms=1,
    )
    with serving(settings) as client:
        yield client


PNG = encode(random_rgb())


def _classify(client, **params):
    return client.post(
        "/v1/classify", content=PNG, headers={"content-type": "image/png"}, params=params
    )


def test_auto_answers_name_the_precision_they_ran_at(client):
    """A generous deadline: the most accurate, fp32; MOE_DEFAULT_PRECISION=auto too."""
    for params in ({"precision": "auto", "deadline_ms": 20_000}, {}):
        r = _classify(client, **params)
        assert r.status_code == 200, r.text
        assert r.json()["precision"] == "fp32"
    r = _classify(client, precision="int8")  # explicit: never changed
    assert r.json()["precision"] == "int8"
    doc = fp32_request(np.zeros((1, 3, 16, 16), np.float32), precision="auto")
    r = client.post("/v2/models/tiny/infer", json=doc)
    assert r.status_code == 200 and r.json()["parameters"]["precision"] == "fp32"
    metrics = client.get("/metrics").text
    chosen = re.search(
        r'moe_auto_precision_images_total\{k="",model="tiny",precision="fp32"\} (\S+)', metrics
    )
    assert chosen and float(chosen.group(1)) >= 3
    assert re.search(
        r'moe_latency_prediction_ratio_count\{model="tiny",precision="fp32"\} [1-9]', metrics
    )
    assert 'moe_requests_total{model="tiny",precision="fp32"' in metrics  # not "auto"


def test_a_deadline_no_precision_can_meet_is_refused_at_once(client):
    """Predicted to miss even at the fastest precision (a 1 us deadline): 503 with
    Retry-After before any decoding or device time, counted as shed; an explicit
    precision is refused the same way."""
    before = _shed(client)
    for precision in ("auto", "fp32"):
        r = _classify(client, precision=precision, deadline_ms=0.001)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "after this request's deadline" in r.json()["error"]
    doc = fp32_request(np.zeros((1, 3, 16, 16), np.float32), precision="auto", deadline_ms=0.001)
    assert client.post("/v2/models/tiny/infer", json=doc).status_code == 503
    assert _shed(client) == before + 3
    assert _classify(client, precision="auto", deadline_ms=20_000).status_code == 200


def _shed(client) -> float:
    text = client.get("/metrics").text
    found = re.search(r'moe_shed_requests_total\{model="tiny"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_k_auto_over_http(client):
    """A generous deadline: the model's own k (tiny-moe: 2) at the most accurate
    precision; an explicit k is kept; k=auto means nothing to a plain network."""
    r = _classify(client, model="tiny-moe", k="auto", deadline_ms=20_000)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["k"], len(doc["experts"]), doc["precision"]) == (2, 2, "fp32")
    assert _classify(client, model="tiny-moe", k="1").json()["k"] == 1
    r = _classify(client, model="tiny", k="auto")
    assert r.status_code == 400 and "applies only to mixture" in r.json()["error"]
    r = _classify(client, model="tiny-moe", k="two")
    assert r.status_code == 400 and "k must be an integer or auto" in r.json()["error"]
    metrics = client.get("/metrics").text
    assert re.search(
        r'moe_auto_precision_images_total\{k="2",model="tiny-moe",precision="fp32"\} [1-9]',
        metrics,
    )
