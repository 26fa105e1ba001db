"""The Open Inference Protocol (KServe v2) REST wire format, without HTTP framework.

Implements the inference request/response JSON objects, Triton's binary tensor data
extension (a JSON header of `Inference-Header-Content-Length` bytes followed by raw
little-endian tensors, `binary_data_size` per input, `binary_data` per requested
output, `binary_data_output` per request) and its classification extension
(`"classification": K` on a requested output: BYTES "score:index:label" strings).

Everything here is pure and synchronous so it can run off the event loop and be
tested without a server; every malformed request is a `ProtocolError` (400) saying
which field is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
# Element sizes of the protocol's datatypes (BYTES: 4-byte length + data per element).
DATATYPE_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
    "BYTES": None,
}


class ProtocolError(ValueError):
    """A malformed or inconsistent inference request (answered 400)."""


class PayloadTooLarge(ValueError):
    """A compressed body that inflates past the body limit (answered 413)."""


class UnsupportedEncoding(ValueError):
    """A Content-Encoding other than identity, gzip or deflate (answered 415)."""


@dataclass
class RequestInput:
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]
    data: Any = None  # the JSON "data", when not binary
    raw: bytes | None = None  # the binary tensor data, when binary_data_size was given


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None
    classification: int | None = None


@dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None


@dataclass
class ResponseOutput:
    """An output tensor: FP32/INT32 arrays, or BYTES as a list of byte strings."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    binary: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


# -- request -------------------------------------------------------------------------------


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request Content-Encoding (tritonclient can gzip or deflate requests),
    inflating at most `limit` bytes: a small compressed body cannot become a huge one."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise UnsupportedEncoding(
            f"unsupported Content-Encoding {encoding!r}; use identity, gzip or deflate"
        )
    wbits = 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"body is not valid {enc} data: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise ProtocolError(f"body is truncated {enc} data")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) per the binary tensor data extension."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length!r}; it must be an integer between 1 and the "
            f"body length ({len(body)})"
        )
    return body[:n], body[n:]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise ProtocolError(f"{where}: parameter {key!r} must be a string, number or boolean")
    return value


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse and check the structure of an inference request (not yet the model fit)."""
    head, binary = split_body(body, header_length)
    if not head.strip():
        raise ProtocolError("empty request body: expected an inference request JSON object")
    try:
        doc = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError("request must be a JSON object with an 'inputs' array")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = _parameters(doc.get("parameters"), "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty array of input tensors")
    inputs, offset = [], 0
    for i, item in enumerate(raw_inputs):
        inp, offset = _parse_input(item, i, binary, offset)
        inputs.append(inp)
    if offset != len(binary):
        raise ProtocolError(
            f"the body has {len(binary) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    outputs = None
    if "outputs" in doc:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be an array")
        outputs = [_parse_output(item, i) for i, item in enumerate(raw_outputs)]
    return InferRequest(request_id, parameters, inputs, outputs)


def _parse_input(item: Any, i: int, binary: bytes, offset: int) -> tuple[RequestInput, int]:
    where = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}: 'name' must be a non-empty string")
    where = f"input {name!r}"
    if not isinstance(datatype, str) or datatype not in DATATYPE_SIZES:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise ProtocolError(f"{where}: 'shape' must be an array of non-negative integers")
    parameters = _parameters(item.get("parameters"), where)
    inp = RequestInput(name, datatype, shape, parameters)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise ProtocolError(f"{where}: give either 'data' or binary_data_size, not both")
        if offset + size > len(binary):
            raise ProtocolError(
                f"{where}: binary_data_size is {size} but only {len(binary) - offset} bytes of "
                "binary data remain in the body"
            )
        inp.raw = binary[offset : offset + size]
        return inp, offset + size
    if "data" not in item:
        raise ProtocolError(f"{where}: no 'data' and no binary_data_size parameter")
    inp.data = item["data"]
    return inp, offset


def _parse_output(item: Any, i: int) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ProtocolError(f"outputs[{i}] must be an object with a 'name'")
    name = item["name"]
    parameters = _parameters(item.get("parameters"), f"output {name!r}")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"output {name!r}: binary_data must be a boolean")
    classification = parameters.get("classification")
    if classification is not None and (not _is_int(classification) or classification < 1):
        raise ProtocolError(f"output {name!r}: classification must be a positive integer")
    return RequestedOutput(name, binary, classification)


# -- input tensors -------------------------------------------------------------------------


def element_count(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def fp32_tensor(inp: RequestInput) -> np.ndarray:
    """An FP32 input as a float32 array of its declared shape (all values finite)."""
    where = f"input {inp.name!r}"
    if inp.datatype != "FP32":
        raise ProtocolError(f"{where}: datatype is {inp.datatype}, expected FP32")
    count = element_count(inp.shape)
    if inp.raw is not None:
        if len(inp.raw) != 4 * count:
            raise ProtocolError(
                f"{where}: shape {inp.shape} needs {4 * count} bytes of FP32 data, "
                f"binary_data_size gives {len(inp.raw)}"
            )
        array = np.frombuffer(inp.raw, dtype="<f4").astype(np.float32)
    else:
        try:
            array = np.asarray(inp.data, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"{where}: 'data' is not an array of numbers ({exc})") from exc
        if array.size != count:
            raise ProtocolError(
                f"{where}: shape {inp.shape} has {count} elements, 'data' has {array.size}"
            )
    if not np.isfinite(array).all():
        raise ProtocolError(f"{where}: tensor contains NaN or inf")
    return array.reshape(inp.shape)


def bytes_elements(inp: RequestInput) -> list[bytes]:
    """A BYTES input's elements: binary (length-prefixed) or JSON (base64 strings, since
    JSON strings cannot carry arbitrary bytes such as an encoded image)."""
    where = f"input {inp.name!r}"
    if inp.datatype != "BYTES":
        raise ProtocolError(f"{where}: datatype is {inp.datatype}, expected BYTES")
    count = element_count(inp.shape)
    if inp.raw is not None:
        return deserialize_bytes(inp.raw, count, where)
    flat = _flatten(inp.data)
    if len(flat) != count:
        raise ProtocolError(
            f"{where}: shape {inp.shape} has {count} elements, 'data' has {len(flat)}"
        )
    out = []
    for j, item in enumerate(flat):
        if not isinstance(item, str):
            raise ProtocolError(f"{where}: element {j} must be a base64 string")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"{where}: element {j} is not valid base64 ({exc})") from exc
    return out


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def deserialize_bytes(raw: bytes, count: int, where: str = "BYTES tensor") -> list[bytes]:
    """Binary BYTES: per element a little-endian uint32 length, then the bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(f"{where}: truncated BYTES element length at byte {pos}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ProtocolError(
                f"{where}: BYTES element {len(out)} claims {n} bytes, only {len(raw) - pos} remain"
            )
        out.append(raw[pos : pos + n])
        pos += n
    if len(out) != count:
        raise ProtocolError(f"{where}: shape needs {count} BYTES elements, data has {len(out)}")
    return out


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# -- outputs -------------------------------------------------------------------------------


def classification_strings(probs: np.ndarray, labels: list[str], count: int) -> list[bytes]:
    """Triton's classification extension: per image the `count` highest scores as
    "score:index:label", best first (ties to the lower index), row-major [N, count]."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :count]
    out = []
    for row, indices in zip(probs, order, strict=True):
        for i in indices:
            out.append(f"{float(row[i]):f}:{int(i)}:{labels[i]}".encode())
    return out


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    parameters: dict[str, Any],
    outputs: list[ResponseOutput],
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when no output is binary)."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    blobs: list[bytes] = []
    doc_outputs = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        params = dict(out.parameters)
        if out.datatype == "BYTES":
            items = list(out.data)
            if out.binary:
                blob = serialize_bytes(items)
            else:
                entry["data"] = [item.decode("utf-8", "replace") for item in items]
        else:
            array = np.ascontiguousarray(out.data)
            if out.binary:
                blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            else:
                entry["data"] = array.reshape(-1).tolist()
        if out.binary:
            params["binary_data_size"] = len(blob)
            blobs.append(blob)
        if params:
            entry["parameters"] = params
        doc_outputs.append(entry)
    doc["outputs"] = doc_outputs
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
