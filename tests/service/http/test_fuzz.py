"""Generated requests against the HTTP parsers (v1 query, bodies and multipart; v2 JSON,
the binary tensor extension and its header, content encodings): every answer is a 2xx
or a JSON 4xx, never a 5xx, and the server is still live afterwards. Bounded: a fixed
number of examples each, loopback in-process, derandomised so CI sees the same ones."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.settings import Settings
from tests.helpers import encode, random_rgb, serving

PNG = encode(random_rgb(16, 16))
ASCII = st.characters(min_codepoint=32, max_codepoint=126)  # what a header value can hold
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client(shared_repo):
    settings_ = Settings(
        model_repository=shared_repo,
        precisions=["fp32"],
        max_batch_size=4,
        max_queue_delay_ms=1,
        max_body_bytes=64 * 1024,
        max_image_pixels=100_000,
    )
    with serving(settings_, raise_server_exceptions=False) as client:
        yield client
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def assert_answered(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
PARAMETER_KEYS = ["precision", "top_k", "k", "timeout", "deadline_ms", "dual_module",
                  "binary_data_output", "classification"]  # fmt: skip
parameters = st.dictionaries(
    st.one_of(st.sampled_from(PARAMETER_KEYS), st.text(max_size=6)), json_values, max_size=4
)
shapes = st.lists(st.integers(-2, 20), max_size=5)


@st.composite
def v2_inputs(draw: Any) -> dict[str, Any]:
    """An input tensor: mostly plausible, each field sometimes replaced by anything."""
    shape = draw(st.one_of(st.just([1, 3, 16, 16]), shapes))
    n = int(np.prod(shape)) if shape and all(s >= 0 for s in shape) else 0
    data = draw(
        st.one_of(
            st.just([0.5] * min(n, 2000)),
            st.lists(st.one_of(st.floats(allow_nan=False), st.integers(), st.text()), max_size=8),
            json_values,
        )
    )
    doc = {
        "name": draw(st.sampled_from(["input", "image", "x", ""])),
        "datatype": draw(st.sampled_from(["FP32", "BYTES", "INT8", "FP64", "fp32", ""])),
        "shape": shape,
        "data": data,
    }
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    for key in list(doc):
        if draw(st.integers(0, 9)) == 0:
            doc[key] = draw(json_values)
    return doc


@st.composite
def v2_docs(draw: Any) -> Any:
    doc: dict[str, Any] = {"inputs": draw(st.lists(v2_inputs(), max_size=2))}
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["probabilities", "experts", "x"])},
                    optional={"parameters": parameters},
                ),
                max_size=3,
            )
        )
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    return doc


@FUZZ
@given(doc=v2_docs(), model=st.sampled_from(["tiny", "tiny-moe"]))
def test_v2_json(client, doc, model):
    assert_answered(client.post(f"/v2/models/{model}/infer", json=doc))


@FUZZ
@given(
    header=v2_docs(),
    header_length=st.one_of(st.none(), st.integers(-5, 400), st.text(ASCII, max_size=6)),
    tail=st.binary(max_size=3100),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "gzip, gzip", "x"]),
)
def test_v2_binary_extension_and_encodings(client, header, header_length, tail, encoding):
    head = json.dumps(header).encode()
    headers = {"content-type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    if encoding is not None:
        headers["content-encoding"] = encoding
    r = client.post("/v2/models/tiny/infer", content=head + tail, headers=headers)
    assert_answered(r)


query_values = st.one_of(st.text(max_size=10), st.integers(-3, 300).map(str))


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["model", "precision", "top_k", "k", "deadline_ms", "dual_module"]),
        query_values,
        max_size=4,
    ),
    body=st.one_of(st.just(PNG), st.binary(max_size=2000), st.just(PNG[:100])),
    ctype=st.sampled_from(["image/png", "image/jpeg", "application/json", "", "image/*",
                           "multipart/form-data", "multipart/form-data; boundary=x"]),
)  # fmt: skip
def test_v1(client, query, body, ctype):
    r = client.post("/v1/classify", content=body, headers={"content-type": ctype}, params=query)
    assert_answered(r)


@FUZZ
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["image", "file", ""]),
            st.one_of(st.just(PNG), st.binary(max_size=500)),
            st.sampled_from(["a.png", "", "x"]),
        ),
        max_size=6,
    )
)
def test_v1_multipart(client, fields):
    files = [(name, (filename, data, "image/png")) for name, data, filename in fields]
    if not files:
        files = [("other", ("a", b"", "text/plain"))]
    assert_answered(client.post("/v1/classify", files=files))
