"""A server holding its models at int16 and int8 keeps one weight store per model
(kernels/ops/store.py): int8 requests read int16's high byte plane, answers are those
of the same networks built offline, and /metrics counts every weight once."""

from __future__ import annotations

import re

import numpy as np
import pytest

from experts.model.repository import Repository
from experts.networks.build import build_network, store_for
from kernels.reference import softmax
from service.settings import Settings
from tests.helpers import wait_loaded


@pytest.fixture(scope="module")
def client(shared_repo):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    settings = Settings(
        model_repository=shared_repo,
        models=["tiny", "tiny-moe"],
        precisions=["int16", "int8"],
        max_batch_size=4,
        max_queue_delay_ms=1,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        wait_loaded(app)
        yield client


def _infer(client, model: str, x: np.ndarray, precision: str) -> np.ndarray:
    doc = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        "parameters": {"precision": precision},
    }
    r = client.post(f"/v2/models/{model}/infer", json=doc)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["precision"] == precision
    out = r.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_int16_and_int8_share_one_store(client, device, shared_repo, name):
    model = Repository(shared_repo).load(name)
    x = np.random.default_rng(3).random((2, *model.input_shape), np.float32)
    store = store_for(["int16", "int8"])
    offline = {p: build_network(model, device, p, store=store) for p in ("int16", "int8")}
    alone16 = build_network(model, device, "int16")
    for precision, network in offline.items():
        got = _infer(client, name, x, precision)
        scores = network.run(x).scores
        want = scores if network.ends_in_probabilities else softmax(scores)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    metrics = client.get("/metrics").text
    resident = {
        p: float(
            re.search(
                rf'moe_resident_weight_bytes\{{model="{name}",precision="{p}"\}} (\S+)', metrics
            ).group(1)
        )
        for p in ("int16", "int8")
    }
    # (The store may pad the experts' channels to four for int8's byte dot products:
    # tests/experts/networks/test_store.py.)
    assert resident["int16"] == offline["int16"].weight_bytes <= 1.2 * alone16.weight_bytes
    assert resident["int8"] == offline["int8"].weight_bytes < 0.1 * resident["int16"]
    assert sum(resident.values()) <= 1.05 * resident["int16"]
