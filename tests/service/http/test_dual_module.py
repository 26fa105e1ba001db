"""Dual-module inference over HTTP: the server's default (MOE_DUAL_MODULE), the
dual_module request parameter (v1 query, v2 parameters) choosing per request on one
loaded model, answers equal to the network run in-process, and bad requests as
JSON 400s while the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experts.model.dual_module import DUAL_MODULE_FILE
from experts.model.repository import Repository
from experts.networks.build import build_network
from experts.networks.dual_fit import fit_dual_module
from kernels.runtime import Device
from service.settings import Settings
from tests.helpers import fp32_request, make_repo, serving

EXPERT_FC = [f"experts.{i}.fc" for i in range(4)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """tiny and tiny-moe; tiny-moe with little modules on its experts' fc."""
    root = make_repo(tmp_path_factory.mktemp("models"), mixture=True)
    model = Repository(root).load("tiny-moe")
    x = np.random.default_rng(7).standard_normal((64, 3, 16, 16), np.float32)
    dual = fit_dual_module(model.meta, model.weights, [x], EXPERT_FC, skip_target=0.5)
    Repository(root).write_file("tiny-moe", DUAL_MODULE_FILE, dual.to_bytes(model.meta))
    return root


@pytest.fixture(scope="module")
def client(repo):
    settings = Settings(
        model_repository=repo,
        models=["tiny-moe", "tiny"],
        precisions=["fp32", "int8"],
        dual_module=("fc",),  # the server's default: every expert's fc
        max_batch_size=4,
        max_queue_delay_ms=1,
    )
    with serving(settings) as client:
        yield client


def _tensor(n: int = 3) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((n, 3, 16, 16), np.float32)


def _v2(client, x: np.ndarray, model: str = "tiny-moe", **parameters):
    return client.post(f"/v2/models/{model}/infer", json=fp32_request(x, **parameters))


def _probabilities(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    out = {o["name"]: o for o in response.json()["outputs"]}["probabilities"]
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_per_request_choice_on_one_loaded_model(client, repo, precision):
    x = _tensor()
    model = Repository(repo).load("tiny-moe")
    device = Device()
    plain = build_network(model, device, precision)
    dual = build_network(model, device, precision, dual_module=["fc"])
    default = _v2(client, x, precision=precision)
    assert default.json()["parameters"]["dual_module"] == ",".join(EXPERT_FC)
    off = _v2(client, x, precision=precision, dual_module="none")
    assert "dual_module" not in off.json()["parameters"]
    for response, network in ((default, dual), (off, plain)):
        want = np.exp(network.run(x).scores)
        want /= want.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(_probabilities(response), want, rtol=1e-5, atol=1e-6)


def test_v1_reports_the_layers(client):
    from tests.helpers import encode, random_rgb

    png = encode(random_rgb())
    headers = {"content-type": "image/png"}
    r = client.post("/v1/classify", content=png, headers=headers, params={"model": "tiny-moe"})
    assert r.status_code == 200, r.text
    assert r.json()["dual_module"] == EXPERT_FC
    params = {"model": "tiny-moe", "dual_module": "experts.2.fc"}
    r = client.post("/v1/classify", content=png, headers=headers, params=params)
    assert r.json()["dual_module"] == ["experts.2.fc"]  # one by one at int8; fp32 groups
    params["dual_module"] = "none"
    r = client.post("/v1/classify", content=png, headers=headers, params=params)
    assert "dual_module" not in r.json()


@pytest.mark.parametrize(
    "params,contains",
    [
        ({"dual_module": "out"}, "head.out is not a fully connected layer followed by relu"),
        ({"dual_module": "fc9"}, "has no layer 'fc9'"),
        ({"dual_module": "none,fc"}, "'none' cannot be combined"),
        ({"dual_module": 5}, "dual_module must be a comma list"),
    ],
)
def test_bad_requests_are_400(client, params, contains):
    r = _v2(client, _tensor(1), **params)
    assert r.status_code == 400, r.text
    assert contains in r.json()["error"].lower()
    assert _v2(client, _tensor(1)).status_code == 200  # still serving


def test_a_model_without_little_modules_says_so(client):
    """tiny has no layer a little module could serve; MOE_DUAL_MODULE's fc is tiny-moe's."""
    r = _v2(client, _tensor(1), model="tiny", dual_module="fc")
    assert (
        r.status_code == 400 and "fc is not a fully connected layer followed" in r.json()["error"]
    )


def test_resident_weights_count_the_little_modules_once(client, repo):
    """The plain and the dual network share the big weights: the gauge is the plain
    network's bytes plus MOE_DUAL_MODULE's little modules, not a second copy."""
    import re

    metrics = client.get("/metrics").text
    found = re.search(
        r'moe_resident_weight_bytes\{model="tiny-moe",precision="fp32"\} (\S+)', metrics
    )
    model = Repository(repo).load("tiny-moe")
    plain = build_network(model, Device(), "fp32")
    dual = build_network(model, Device(), "fp32", dual_module=["fc"])
    assert dual.little_bytes > 0
    assert float(found.group(1)) == plain.weight_bytes + dual.little_bytes


def test_model_metadata_lists_the_layers_on_offer(client):
    doc = client.get("/v2/models/tiny-moe").json()
    assert doc["parameters"]["dual_module_layers"] == EXPERT_FC
    assert "parameters" not in client.get("/v2/models/tiny").json()
