"""The HTTP API in-process (service/http/app.py and its routes_v1, routes_v2 and
routes_metrics, under FastAPI's TestClient, which runs the lifespan): every endpoint of
/v1 and /v2, /metrics and /docs, on a tiny model and a tiny mixture of experts, and
every kind of bad input answered with a JSON 4xx while the server keeps serving."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experts.model.repository import Repository
from experts.model.spec import parse_layers
from experts.networks.reference import forward
from kernels.reference import softmax
from service.images import decode_image, preprocess
from service.settings import Settings
from tests.helpers import encode, photo_jpeg, random_rgb, wait_loaded

MAX_BODY = 256 * 1024
MAX_PIXELS = 1_000_000
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def app(shared_repo):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    settings = Settings(
        model_repository=shared_repo,
        precisions=["fp32", "int8"],  # int8 on synthetic calibration (the models have none)
        max_batch_size=4,
        max_queue_delay_ms=1,
        max_body_bytes=MAX_BODY,
        max_image_pixels=MAX_PIXELS,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        wait_loaded(app)
        app.state.client = client
        yield app


@pytest.fixture
def client(app):
    return app.state.client


PNG = encode(random_rgb())


def classify(client, data: bytes = PNG, ctype: str = "image/png", **params):
    return client.post("/v1/classify", content=data, headers={"content-type": ctype}, params=params)


def reference_probs(meta: dict, repo: Path, data: bytes) -> np.ndarray:
    """tiny's probabilities for an encoded image, from the numpy reference."""
    x = preprocess(decode_image(data, "ref"), meta["input"])[np.newaxis]
    return ref_tensor_probs(meta, repo, x)[0]


def assert_error(response, status: int, contains: str = "") -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert contains.lower() in body["error"].lower(), body["error"]
    return body["error"]


# -- /v1/classify ----------------------------------------------------------------------------


def test_v1_raw_image(client, shared_repo, tiny_meta):
    r = classify(client)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "tiny" and doc["version"] == "1" and doc["precision"] == "fp32"
    assert doc["device"] and "experts" not in doc
    preds = doc["predictions"]
    assert len(preds) == 3  # top_k defaults to min(5, classes)
    assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
    want = reference_probs(tiny_meta, shared_repo, PNG)
    for p in preds:
        assert p["label"] == tiny_meta["labels"][p["index"]]
        assert p["score"] == pytest.approx(float(want[p["index"]]), rel=1e-4, abs=1e-6)
    assert set(doc["timings_ms"]) == {"queue", "preprocess", "inference", "total"}
    assert doc["timings_ms"]["total"] >= doc["timings_ms"]["inference"] >= 0
    assert UUID_RE.match(r.headers["x-request-id"])


def test_v1_photo_and_parameters(client):
    r = classify(
        client, photo_jpeg("coffee"), "image/jpeg", model="tiny", precision="fp32", top_k=2
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_request_id_echoed_or_replaced(client):
    r = client.post(
        "/v1/classify",
        content=PNG,
        headers={"content-type": "image/png", "x-request-id": "client-42.a"},
    )
    assert r.headers["x-request-id"] == "client-42.a"
    r = client.get("/v2/health/live", headers={"x-request-id": "bad id\twith spaces"})
    assert UUID_RE.match(r.headers["x-request-id"])


def test_v1_multipart_single_and_batch(client, shared_repo, tiny_meta):
    other = encode(random_rgb(seed=7))
    r = client.post("/v1/classify", files=[("image", ("a.png", PNG, "image/png"))])
    assert r.status_code == 200 and isinstance(r.json(), dict), r.text
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate([PNG, other, PNG])]
    r = client.post("/v1/classify", files=files, params={"top_k": 1})
    assert r.status_code == 200, r.text
    answers = r.json()
    assert isinstance(answers, list) and len(answers) == 3
    for answer, data in zip(answers, [PNG, other, PNG], strict=True):
        (top,) = answer["predictions"]
        want = reference_probs(tiny_meta, shared_repo, data)
        assert top["index"] == int(np.argmax(want))
        assert top["score"] == pytest.approx(float(want.max()), rel=1e-4)


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kw)
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    image = Image.fromarray(random_rgb(20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: _png(Image.fromarray(random_rgb()).convert("L")),
        lambda: _png(Image.fromarray(random_rgb()).convert("RGBA")),
        lambda: _png(Image.fromarray(random_rgb()).convert("P")),
        lambda: _png(Image.fromarray((np.arange(600, dtype=np.uint16) * 97).reshape(20, 30))),
        _exif_rotated_jpeg,
    ],
    ids=["grey", "rgba", "palette", "16-bit", "exif-rotated"],
)
def test_v1_accepts_image_variants(client, make):
    r = classify(client, make())
    assert r.status_code == 200, r.text


def _bomb() -> bytes:
    """2000 x 2000 = 4 M pixels (over the 1 M limit) in a few kB of PNG."""
    return _png(Image.new("L", (2000, 2000)))


BAD_IMAGES = {
    "empty body": (b"", "image/png", 400, "empty"),
    "not an image": (b"hello, this is text", "image/png", 400, "not a readable image"),
    "truncated png": (PNG[: len(PNG) // 2], "image/png", 400, "image"),
    "corrupt jpeg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "image/jpeg", 400, "image"),
    "undecodable format": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "image/svg+xml",
        400,
        "not a readable image",
    ),
    "decompression bomb": (None, "image/png", 400, "refusing to decode"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_v1_bad_images_are_400(client, case):
    data, ctype, status, contains = BAD_IMAGES[case]
    if data is None:
        data = _bomb()
    assert_error(classify(client, data, ctype), status, contains)
    assert classify(client).status_code == 200  # still serving


def test_v1_body_limits(client):
    big = b"\x00" * (MAX_BODY + 1)
    assert_error(classify(client, big), 413, "MOE_MAX_BODY_BYTES")

    def chunks():  # no Content-Length: the limit applies as the body streams in
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"\x00" * 4096

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "image/png"})
    assert_error(r, 413)
    assert classify(client).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "contains"),
    [
        ({"ctype": "application/json"}, 415, "content-type"),
        ({"ctype": "text/plain"}, 415, "content-type"),
        ({"ctype": "", "data": b""}, 400, "empty"),
        ({"model": "nope"}, 404, "unknown model"),
        ({"precision": "fp64"}, 400, "unknown precision"),
        ({"top_k": 0}, 400, "top_k"),
        ({"top_k": 4}, 400, "top_k"),
        ({"top_k": "abc"}, 400, "top_k"),
        ({"k": 1}, 400, "applies only to mixture-of-experts models"),
        ({"model": "tiny-moe", "k": 0}, 400, "between 1 and 4"),
        ({"model": "tiny-moe", "k": 5}, 400, "between 1 and 4"),
        ({"deadline_ms": 0}, 400, "deadline_ms must be a positive number"),
        ({"deadline_ms": -5}, 400, "deadline_ms must be a positive number"),
        ({"deadline_ms": "soon"}, 400, "deadline_ms"),
    ],
)
def test_v1_bad_requests(client, kwargs, status, contains):
    kwargs = dict(kwargs)
    data = kwargs.pop("data", PNG)
    ctype = kwargs.pop("ctype", "image/png")
    assert_error(classify(client, data, ctype, **kwargs), status, contains)


def test_v1_bad_multipart(client):
    r = client.post("/v1/classify", files=[("picture", ("a.png", PNG, "image/png"))])
    assert_error(r, 400, "no `image`")
    r = client.post(
        "/v1/classify", data={"image": "not a file"}, files=[("other", ("a.png", PNG, "image/png"))]
    )
    assert_error(r, 400, "file upload")
    files = [("image", (f"{i}.png", PNG, "image/png")) for i in range(5)]  # max batch is 4
    assert_error(client.post("/v1/classify", files=files), 400, "batch of 5, at most 4")
    r = client.post(
        "/v1/classify",
        content=b"--xyz\r\nnot multipart",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 400
    r = client.post("/v1/classify", files=[("image", ("bad.png", b"junk", "image/png"))])
    assert "bad.png" in assert_error(r, 400, "not a readable image")


def test_v1_mixture_reports_experts(client):
    r = classify(client, model="tiny-moe")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["version"] == "3"
    experts = doc["experts"]
    assert len(experts) == 2  # the model's default k
    assert sum(e["weight"] for e in experts) == pytest.approx(1, abs=1e-5)
    assert all(0 <= e["expert"] < 4 for e in experts)
    r = classify(client, model="tiny-moe", k=1)
    (only,) = r.json()["experts"]
    assert only["weight"] == pytest.approx(1)
    metrics = client.get("/metrics").text
    routed = re.findall(r'moe_expert_images_total\{expert="(\d)",model="tiny-moe"\} (\S+)', metrics)
    assert sum(float(v) for _, v in routed) >= 3


def test_v1_models_lists_what_requests_may_ask_for(client):
    doc = client.get("/v1/models").json()
    assert doc["precisions"] == ["fp32", "int8"] and doc["default_precision"] == "fp32"
    assert isinstance(doc["device"], str) and doc["device"]
    tiny, moe = doc["models"]  # in serving order: the first is the default model
    assert tiny == {
        "name": "tiny",
        "version": "1",
        "classes": 3,
        "input_shape": [3, 16, 16],
        "experts": None,
        "k": None,
        "dual_module_layers": [],
    }
    assert (moe["name"], moe["experts"], moe["k"]) == ("tiny-moe", 4, 2)


def test_demo_page_and_its_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/static/demo.css", "/static/demo.js"]
    for asset in assets:
        assert client.get(asset).status_code == 200
    assert_error(client.get("/static/missing.js"), 404, "no such endpoint")


# -- /v2 health and metadata -------------------------------------------------------------------


def test_v2_server_metadata_and_health(client):
    doc = client.get("/v2").json()
    assert doc["name"] == "moe-alexnet" and isinstance(doc["version"], str)
    assert {"binary_tensor_data", "classification"} <= set(doc["extensions"])
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_v2_model_metadata(client):
    doc = client.get("/v2/models/tiny").json()
    assert doc == {
        "name": "tiny",
        "versions": ["1"],
        "platform": "moe-alexnet_opencl",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert client.get("/v2/models/tiny/versions/1").json() == doc
    names = [o["name"] for o in client.get("/v2/models/tiny-moe").json()["outputs"]]
    assert names == ["probabilities", "experts", "expert_weights"]
    assert_error(client.get("/v2/models/nope"), 404, "unknown model")
    assert_error(client.get("/v2/models/tiny/versions/2"), 404, "no version '2'")


def test_v2_model_ready(client):
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    assert_error(client.get("/v2/models/nope/ready"), 404)
    assert_error(client.get("/v2/models/tiny/versions/9/ready"), 404)


# -- /v2 inference -------------------------------------------------------------------------------


def tensor(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def ref_tensor_probs(meta: dict, repo: Path, x: np.ndarray) -> np.ndarray:
    """tiny's probabilities for a batch of input tensors, from the numpy reference."""
    weights = Repository(repo).load("tiny").weights
    return softmax(forward(parse_layers(meta["layers"]), weights, x))


def binary_request(doc: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), {
        "Inference-Header-Content-Length": str(len(head)),
        "content-type": "application/octet-stream",
    }


def parse_binary_response(r) -> tuple[dict, bytes]:
    n = int(r.headers["inference-header-content-length"])
    return json.loads(r.content[:n]), r.content[n:]


def test_v2_infer_json_fp32(client, shared_repo, tiny_meta):
    x = tensor(2)
    doc = {
        "id": "req-1",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 3, 16, 16], "data": x.tolist()}
        ],
    }
    r = client.post("/v2/models/tiny/infer", json=doc)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    out = r.json()
    assert out["model_name"] == "tiny" and out["model_version"] == "1" and out["id"] == "req-1"
    assert out["parameters"]["precision"] == "fp32"
    (probs,) = out["outputs"]
    assert probs["name"] == "probabilities" and probs["datatype"] == "FP32"
    assert probs["shape"] == [2, 3] and "parameters" not in probs
    got = np.array(probs["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(
        got, ref_tensor_probs(tiny_meta, shared_repo, x), rtol=1e-4, atol=1e-6
    )


def test_v2_infer_binary_fp32_and_binary_outputs(client, shared_repo, tiny_meta):
    x = tensor(3, seed=1)
    doc = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [3, 3, 16, 16],
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_request(doc, x.tobytes())
    r = client.post("/v2/models/tiny/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, blob = parse_binary_response(r)
    (out,) = head["outputs"]
    assert out["parameters"]["binary_data_size"] == len(blob) == 3 * 3 * 4 and "data" not in out
    got = np.frombuffer(blob, "<f4").reshape(3, 3)
    np.testing.assert_allclose(
        got, ref_tensor_probs(tiny_meta, shared_repo, x), rtol=1e-4, atol=1e-6
    )


def test_v2_infer_image_bytes_matches_v1(client):
    photo = photo_jpeg("chelsea")
    v1 = classify(client, photo, "image/jpeg").json()["predictions"]
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(photo).decode()],
            }
        ]
    }
    r = client.post("/v2/models/tiny/infer", json=doc)
    assert r.status_code == 200, r.text
    probs = r.json()["outputs"][0]["data"]
    for p in v1:
        assert probs[p["index"]] == pytest.approx(p["score"], rel=1e-5)
    # The binary form of the same BYTES tensor.
    blob = struct.pack("<I", len(photo)) + photo
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1, 1],
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    body, headers = binary_request(doc, blob)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == probs


def test_v2_classification_extension(client, shared_repo, tiny_meta):
    x = tensor(2, seed=3)
    want = ref_tensor_probs(tiny_meta, shared_repo, x)
    doc = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [2, 3, 16, 16],
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    out = client.post("/v2/models/tiny/infer", json=doc).json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    for i, row in enumerate([out["data"][:2], out["data"][2:]]):
        order = np.argsort(-want[i], kind="stable")[:2]
        for text, index in zip(row, order, strict=True):
            score, idx, label = text.split(":")
            assert int(idx) == index and label == tiny_meta["labels"][index]
            assert float(score) == pytest.approx(float(want[i, index]), abs=1e-5)
    # top_k as a request parameter, answered in binary.
    doc = {
        "inputs": doc["inputs"],
        "parameters": {"top_k": 1},
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    r = client.post("/v2/models/tiny/infer", json=doc)
    head, blob = parse_binary_response(r)
    assert head["outputs"][0]["shape"] == [2, 1]
    n0 = struct.unpack_from("<I", blob)[0]
    assert blob[4 : 4 + n0].decode().endswith(tiny_meta["labels"][int(np.argmax(want[0]))])


def test_v2_gzip_request(client):
    x = tensor(1)
    doc = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 3, 16, 16],
                "data": x.ravel().tolist(),
            }
        ]
    }
    r = client.post(
        "/v2/models/tiny/infer",
        content=gzip.compress(json.dumps(doc).encode()),
        headers={"content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text


def test_v2_mixture_outputs(client):
    x = tensor(3, seed=5)
    doc = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [3, 3, 16, 16],
                "data": x.ravel().tolist(),
            }
        ],
        "parameters": {"k": 3},
    }
    r = client.post("/v2/models/tiny-moe/infer", json=doc)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["experts"]["datatype"] == "INT32" and out["experts"]["shape"] == [3, 3]
    weights = np.array(out["expert_weights"]["data"]).reshape(3, 3)
    np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-5)
    assert r.json()["parameters"]["k"] == 3


def _fp32_doc(shape, data=None, datatype="FP32", name="input", **extra):
    n = int(np.prod(shape)) if shape else 1
    doc = {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "data": [0.5] * n if data is None else data,
            }
        ]
    }
    doc.update(extra)
    return doc


V2_BAD_JSON = {
    "wrong shape": (_fp32_doc([1, 3, 8, 8]), "shape"),
    "no batch dim": (_fp32_doc([3, 16, 16]), "shape"),
    "batch over max": (_fp32_doc([5, 3, 16, 16]), "at most 4"),
    "wrong datatype": (_fp32_doc([1, 3, 16, 16], datatype="FP16"), "expected FP32"),
    "unknown datatype": (_fp32_doc([1, 3, 16, 16], datatype="FLOAT"), "unknown datatype"),
    "too few values": (_fp32_doc([1, 3, 16, 16], data=[0.5] * 10), "elements"),
    "ragged data": (_fp32_doc([1, 3, 16, 16], data=[[1, 2], [3]]), "data"),
    "strings as numbers": (_fp32_doc([1, 3, 16, 16], data=["x"] * 768), "data"),
    "unknown input": (_fp32_doc([1, 3, 16, 16], name="pixels"), "unknown input"),
    "two inputs": ({"inputs": _fp32_doc([1, 3, 16, 16])["inputs"] * 2}, "exactly one input"),
    "no inputs": ({"inputs": []}, "inputs"),
    "not an object": ([1, 2, 3], "object"),
    "unknown output": (_fp32_doc([1, 3, 16, 16], outputs=[{"name": "logits"}]), "unknown output"),
    "classification too big": (
        _fp32_doc(
            [1, 3, 16, 16], outputs=[{"name": "probabilities", "parameters": {"classification": 9}}]
        ),
        "classification",
    ),
    "unknown precision": (
        _fp32_doc([1, 3, 16, 16], parameters={"precision": "int4"}),
        "unknown precision",
    ),
    "k on a plain model": (
        _fp32_doc([1, 3, 16, 16], parameters={"k": 2}),
        "applies only to mixture",
    ),
    "top_k out of range": (_fp32_doc([1, 3, 16, 16], parameters={"top_k": 7}), "top_k"),
    "datatype not a string": (_fp32_doc([1, 3, 16, 16], datatype=["FP32"]), "unknown datatype"),
    "timeout not a number": (
        _fp32_doc([1, 3, 16, 16], parameters={"timeout": "1s"}),
        "parameter timeout must be a positive number",
    ),
    "deadline_ms zero": (
        _fp32_doc([1, 3, 16, 16], parameters={"deadline_ms": 0}),
        "parameter deadline_ms must be a positive number",
    ),
    "deadline_ms boolean": (
        _fp32_doc([1, 3, 16, 16], parameters={"deadline_ms": True}),
        "parameter deadline_ms must be a positive number",
    ),
    "bad base64": (_fp32_doc([1], data=["%%%"], datatype="BYTES", name="image"), "base64"),
    "bytes not an image": (
        _fp32_doc([1], data=[base64.b64encode(b"text").decode()], datatype="BYTES", name="image"),
        "not a readable image",
    ),
    "bytes count": (_fp32_doc([2], data=["AAAA"], datatype="BYTES", name="image"), "elements"),
}


@pytest.mark.parametrize("case", list(V2_BAD_JSON))
def test_v2_bad_json_requests_are_400(client, case):
    doc, contains = V2_BAD_JSON[case]
    assert_error(client.post("/v2/models/tiny/infer", json=doc), 400, contains)


def test_v2_bad_bodies(client):
    url = "/v2/models/tiny/infer"
    assert_error(client.post(url, content=b'{"inputs": [}'), 400, "not valid JSON")
    assert_error(client.post(url, content=b""), 400, "empty")
    doc = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 3, 16, 16],
                "parameters": {"binary_data_size": 768 * 4},
            }
        ]
    }
    x = tensor(1).tobytes()
    body, headers = binary_request(doc, x[:-4])
    assert_error(client.post(url, content=body, headers=headers), 400, "remain")
    body, headers = binary_request(doc, x + b"\x00" * 8)
    assert_error(client.post(url, content=body, headers=headers), 400, "binary data")
    doc["inputs"][0]["parameters"]["binary_data_size"] = 768 * 4 - 4
    body, headers = binary_request(doc, x[:-4])
    assert_error(client.post(url, content=body, headers=headers), 400, "bytes of FP32")
    nan = np.full((1, 3, 16, 16), np.nan, np.float32).tobytes()
    doc["inputs"][0]["parameters"]["binary_data_size"] = len(nan)
    body, headers = binary_request(doc, nan)
    assert_error(client.post(url, content=body, headers=headers), 400, "nan")
    headers["Inference-Header-Content-Length"] = "oops"
    assert_error(client.post(url, content=body, headers=headers), 400, "Inference-Header")
    blob = struct.pack("<I", 100) + b"short"
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    body, headers = binary_request(doc, blob)
    assert_error(client.post(url, content=body, headers=headers), 400, "claims 100 bytes")
    assert_error(client.post(url, content=b"x", headers={"content-encoding": "br"}), 415)
    bomb = gzip.compress(b" " * (MAX_BODY * 4))
    assert_error(client.post(url, content=bomb, headers={"content-encoding": "gzip"}), 413)
    assert_error(client.post("/v2/models/nope/infer", json={}), 404, "unknown model")
    assert_error(client.post("/v2/models/tiny/versions/7/infer", json={}), 404, "version")
    assert classify(client).status_code == 200


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/v3/nothing"), 404, "no such endpoint")
    assert_error(client.get("/v1/classify"), 405)


# -- /metrics and /docs --------------------------------------------------------------------------


def test_metrics(client):
    classify(client)
    text = client.get("/metrics").text
    for name in (
        "moe_requests_total",
        "moe_request_duration_seconds_bucket",
        "moe_queue_wait_seconds_bucket",
        "moe_compute_seconds_bucket",
        "moe_batch_size_bucket",
        "moe_in_flight_requests",
        "moe_queue_depth",
        "moe_resident_weight_bytes",
        "moe_ready",
    ):
        assert name in text, name
    assert re.search(
        r'moe_requests_total\{model="tiny",precision="fp32",'
        r'route="/v1/classify",status="200"\} [1-9]',
        text,
    )
    assert re.search(
        r'moe_requests_total\{model="-",precision="-",route="/v1/classify",'
        r'status="404"\}',
        text,
    )
    weight = re.search(r'moe_resident_weight_bytes\{model="tiny",precision="fp32"\} (\S+)', text)
    assert weight and float(weight.group(1)) > 0
    count = re.search(r'moe_batch_size_count\{model="tiny",precision="fp32"\} (\S+)', text)
    assert count and float(count.group(1)) >= 1
    assert "moe_ready 1.0" in text


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    # Offline: every script and style sheet of /docs and /redoc is served here.
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets and not [a for a in assets if "://" in a], assets
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 10_000, asset
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/classify"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(op["requestBody"]["content"])
    assert "example" in op["responses"]["200"]["content"]["application/json"]
    assert "/v2/models/{name}/infer" in spec["paths"]


@pytest.mark.parametrize("model", ["tiny", "tiny-moe"])
def test_classify_at_int8(client, model):
    """A precision per request: int8 answers with its own scores, close to fp32's."""
    fp32 = classify(client, model=model, top_k=3)
    int8 = classify(client, model=model, top_k=3, precision="int8")
    assert fp32.status_code == int8.status_code == 200, int8.text
    assert int8.json()["precision"] == "int8"
    a = {p["index"]: p["score"] for p in fp32.json()["predictions"]}
    b = {p["index"]: p["score"] for p in int8.json()["predictions"]}
    assert set(a) == set(b) and all(abs(a[i] - b[i]) < 0.05 for i in a)
    metrics = client.get("/metrics").text
    weights = {
        p: float(
            re.search(
                rf'moe_resident_weight_bytes\{{model="{model}",'
                rf'precision="{p}"\}} (\S+)',
                metrics,
            ).group(1)
        )
        for p in ("fp32", "int8")
    }
    assert weights["int8"] < 0.5 * weights["fp32"]
