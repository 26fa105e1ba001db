"""The Open Inference Protocol wire format (service/http/protocol.py) on its own: body
splitting, binary tensors, BYTES framing, bounded decompression, classification
strings, response encoding."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from service.http import protocol
from service.http.protocol import (
    PayloadTooLarge,
    ProtocolError,
    ResponseOutput,
    UnsupportedEncoding,
)


def test_split_body():
    assert protocol.split_body(b"{}", None) == (b"{}", b"")
    assert protocol.split_body(b'{"a":1}xyz', "7") == (b'{"a":1}', b"xyz")
    for bad in ("0", "-1", "99", "seven"):
        with pytest.raises(ProtocolError):
            protocol.split_body(b"{}", bad)


def test_binary_inputs_are_consumed_in_order():
    a = np.arange(4, dtype=np.float32)
    b = struct.pack("<I", 3) + b"abc"
    doc = {
        "id": "x",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
            {"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}},
        ],
    }
    head = json.dumps(doc).encode()
    req = protocol.parse_infer_request(head + a.tobytes() + b, str(len(head)))
    assert req.id == "x" and req.outputs is None
    np.testing.assert_array_equal(protocol.fp32_tensor(req.inputs[0]), a)
    assert protocol.bytes_elements(req.inputs[1]) == [b"abc"]


def test_bytes_framing_round_trip_and_errors():
    items = [b"", b"x", b"\x00" * 300]
    raw = protocol.serialize_bytes(items)
    assert protocol.deserialize_bytes(raw, 3) == items
    with pytest.raises(ProtocolError, match="needs 2"):
        protocol.deserialize_bytes(raw, 2)
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.deserialize_bytes(raw + b"\x01", 4)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": []}]}, "shape"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}, "no 'data'"),
        (
            {
                "inputs": [
                    {
                        "name": "a",
                        "datatype": "FP32",
                        "shape": [1],
                        "data": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            "not both",
        ),
        ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1], "data": [1]}]}, "name"),
        ({"inputs": [], "id": 3}, "'id'"),
        (
            {
                "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
                "parameters": {"x": [1]},
            },
            "parameter 'x'",
        ),
        (
            {
                "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
                "outputs": [{"name": "o", "parameters": {"binary_data": "yes"}}],
            },
            "binary_data",
        ),
        (
            {
                "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
                "outputs": [{"name": "o", "parameters": {"classification": 0}}],
            },
            "classification",
        ),
    ],
)
def test_malformed_requests(doc, match):
    with pytest.raises(ProtocolError, match=match):
        protocol.parse_infer_request(json.dumps(doc).encode(), None)


def test_decompress_is_bounded():
    data = b"a" * 1000
    assert protocol.decompress(gzip.compress(data), "gzip", 1000) == data
    assert protocol.decompress(zlib.compress(data), "deflate", 1000) == data
    assert protocol.decompress(data, None, 10) == data  # identity: the body limit applies
    with pytest.raises(PayloadTooLarge):
        protocol.decompress(gzip.compress(data), "gzip", 999)
    with pytest.raises(ProtocolError):
        protocol.decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.decompress(gzip.compress(data)[:-10], "gzip", 1000)
    with pytest.raises(UnsupportedEncoding):
        protocol.decompress(data, "br", 1000)


def test_classification_strings_order_and_format():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32)
    out = protocol.classification_strings(probs, ["a", "b", "c"], 2)
    assert out == [b"0.600000:1:b", b"0.300000:2:c", b"0.500000:0:a", b"0.250000:1:b"]


def test_encode_response_json_and_binary():
    probs = np.array([[0.25, 0.75]], np.float32)
    body, n = protocol.encode_response(
        "m", "1", None, {}, [ResponseOutput("p", "FP32", [1, 2], probs)]
    )
    assert n is None
    doc = json.loads(body)
    assert doc == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
    }
    outputs = [
        ResponseOutput("p", "FP32", [1, 2], probs, binary=True),
        ResponseOutput("c", "BYTES", [1, 1], [b"0.75:1:b"], binary=True),
    ]
    body, n = protocol.encode_response("m", "1", "id7", {"precision": "fp32"}, outputs)
    head = json.loads(body[:n])
    assert head["id"] == "id7" and head["parameters"] == {"precision": "fp32"}
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [8, 12] and len(body) == n + 20
    np.testing.assert_array_equal(np.frombuffer(body[n : n + 8], "<f4"), probs.ravel())
    assert protocol.deserialize_bytes(body[n + 8 :], 1) == [b"0.75:1:b"]
