"""The Open Inference Protocol (KServe v2) REST endpoints, with Triton's binary tensor
data and classification extensions, so tritonclient and KServe clients work unchanged.

Model inputs (one per request): "input", FP32 [N, C, H, W], already preprocessed as
the model's `input` block says; or "image", BYTES [N], encoded image files (binary, or
base64 strings in JSON). Outputs: "probabilities", FP32 [N, classes]; for mixtures also
"experts" (INT32 [N, k]) and "expert_weights" (FP32 [N, k]). Request parameters:
"precision", "top_k" (classification of every output that does not ask otherwise),
"k" (mixtures), "dual_module" (layers, as a comma list), "binary_data_output", "timeout"
(microseconds, as tritonclient sends) and "deadline_ms".
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.http import protocol
from service.http.engine import ModelInfo
from service.http.errors import ApiError
from service.http.image_batch import images_to_batch
from service.http.protocol import ProtocolError, RequestedOutput, ResponseOutput
from service.http.state import ServiceState, Target
from service.images import InputError

router = APIRouter(tags=["v2 (Open Inference Protocol)"])
SERVER_NAME = "moe-alexnet"
PLATFORM = "moe-alexnet_opencl"
EXTENSIONS = ["binary_tensor_data", "classification"]
INPUT_TENSOR, IMAGE_TENSOR = "input", "image"
PROBABILITIES, EXPERTS, EXPERT_WEIGHTS = "probabilities", "experts", "expert_weights"


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _version() -> str:
    try:
        return metadata.version("moe-alexnet")
    except metadata.PackageNotFoundError:
        return "0"


# -- health and metadata -------------------------------------------------------------------


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS}


@router.get("/v2/health/live", summary="Liveness: 200 while the process serves")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready",
    summary="Readiness: 200 once every model is warm, 400 while loading or draining",
)
async def ready(request: Request) -> JSONResponse:
    ok = _state(request).is_ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 400)


def _model_metadata(info: ModelInfo) -> dict[str, Any]:
    c, h, w = info.input_shape
    outputs = [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, info.num_classes]}]
    if info.mixture is not None:
        outputs += [
            {"name": EXPERTS, "datatype": "INT32", "shape": [-1, -1]},
            {"name": EXPERT_WEIGHTS, "datatype": "FP32", "shape": [-1, -1]},
        ]
    doc = {
        "name": info.name,
        "versions": [info.version],
        "platform": PLATFORM,
        "inputs": [
            {"name": INPUT_TENSOR, "datatype": "FP32", "shape": [-1, c, h, w]},
            {"name": IMAGE_TENSOR, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": outputs,
    }
    if info.dual_layers:  # what the dual_module request parameter may name
        doc["parameters"] = {"dual_module_layers": list(info.dual_layers)}
    return doc


@router.get("/v2/models/{name}", summary="Model metadata")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _model_metadata(_state(request).model(name))


@router.get("/v2/models/{name}/versions/{version}", summary="Model metadata (a version)")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _model_metadata(_state(request).model(name, version))


def _model_ready(request: Request, name: str, version: str | None) -> JSONResponse:
    state = _state(request)
    try:
        state.model(name, version)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return JSONResponse({"name": name, "ready": False}, status_code=400)
    ok = state.is_ready
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)


@router.get("/v2/models/{name}/ready", summary="Model readiness")
async def model_ready(request: Request, name: str) -> JSONResponse:
    return _model_ready(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness (a version)")
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return _model_ready(request, name, version)


# -- inference -----------------------------------------------------------------------------

INFER_DOC = {
    "requestBody": {
        "required": True,
        "description": "An inference request JSON object; with the binary tensor data "
        "extension, that JSON (its length in the Inference-Header-Content-Length header) "
        "followed by the raw tensors.",
        "content": {
            "application/json": {
                "example": {
                    "id": "42",
                    "parameters": {"precision": "fp32", "top_k": 3},
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "BYTES",
                            "shape": [1],
                            "data": ["<base64 of a JPEG or PNG file>"],
                        }
                    ],
                    "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/v2/models/{name}/infer", summary="Inference", openapi_extra=INFER_DOC)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference (a version)",
    openapi_extra=INFER_DOC,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = _state(request)
    started = getattr(request.state, "started", None)
    info = state.model(name, version)
    request.state.model = info.name
    body = await request.body()
    try:
        # The request's own deadline is in its body: until parsed, the server's.
        req = await state.decode_pool.run(
            state.deadline(started),
            _parse,
            body,
            request.headers.get("content-encoding"),
            request.headers.get(protocol.HEADER_LENGTH),
            state.settings.max_body_bytes,
        )
    except protocol.PayloadTooLarge as exc:
        raise ApiError(413, str(exc)) from exc
    except protocol.UnsupportedEncoding as exc:
        raise ApiError(415, str(exc)) from exc
    except ProtocolError as exc:
        raise ApiError(400, str(exc)) from exc

    params = req.parameters
    precision = params.get("precision")
    if precision is not None and not isinstance(precision, str):
        raise ApiError(400, "parameter precision must be a string")
    top_k_param = params.get("top_k")
    target, top_k = state.target(
        info, precision, top_k_param, params.get("k"), params.get("dual_module")
    )
    request.state.precision = target.precision
    default_classes = top_k if top_k_param is not None else None
    outputs = _requested_outputs(req.outputs, params, info, default_classes)
    limits = [
        state.client_timeout_s("parameter timeout", params.get("timeout"), 1e-6),
        state.client_timeout_s("parameter deadline_ms", params.get("deadline_ms"), 1e-3),
    ]
    timeout_s = min((t for t in limits if t is not None), default=None)
    deadline = state.deadline(started, timeout_s)
    state.admit(target, 1, deadline)  # before decoding (the image count is checked next)
    batch = await _batch(state, info, req.inputs, deadline)
    result = await state.infer(target, batch, deadline)
    request.state.precision = result.precision or target.precision  # auto: the one it ran at

    tensors = _output_tensors(info, target, result.probs, result.routing, outputs)
    response_params: dict[str, Any] = {
        "precision": result.precision or target.precision,
        "device": state.engine.device_name,
    }
    if result.k is not None:
        response_params["k"] = result.k
    if target.dual:
        response_params["dual_module"] = ",".join(target.dual)
    content, header_length = protocol.encode_response(
        info.name, info.version, req.id, response_params, tensors
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={protocol.HEADER_LENGTH: str(header_length)},
    )


def _parse(
    body: bytes, encoding: str | None, header_length: str | None, limit: int
) -> protocol.InferRequest:
    """Decompress and parse, in the decode pool: a JSON tensor can be megabytes."""
    return protocol.parse_infer_request(protocol.decompress(body, encoding, limit), header_length)


def _requested_outputs(
    requested: list[RequestedOutput] | None,
    params: dict[str, Any],
    info: ModelInfo,
    top_k: int | None,
) -> list[RequestedOutput]:
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ApiError(400, "parameter binary_data_output must be a boolean")
    names = [PROBABILITIES] + ([EXPERTS, EXPERT_WEIGHTS] if info.mixture else [])
    if requested is None:
        requested = [RequestedOutput(n) for n in names]
    out = []
    for item in requested:
        if item.name not in names:
            raise ApiError(
                400, f"unknown output {item.name!r}; model {info.name!r} has: {', '.join(names)}"
            )
        classification = item.classification
        if item.name == PROBABILITIES and classification is None:
            classification = top_k
        if classification is not None:
            if item.name != PROBABILITIES:
                raise ApiError(400, f"output {item.name!r} does not support classification")
            if classification > info.num_classes:
                raise ApiError(
                    400,
                    f"classification of {classification} classes asked, the "
                    f"model has {info.num_classes}",
                )
        binary = binary_default if item.binary is None else item.binary
        out.append(RequestedOutput(item.name, binary, classification))
    return out


async def _batch(
    state: ServiceState, info: ModelInfo, inputs: list[Any], deadline: float
) -> np.ndarray:
    """The request's single input as a preprocessed (N, C, H, W) batch."""
    if len(inputs) != 1:
        raise ApiError(
            400,
            f"expected exactly one input ({INPUT_TENSOR!r} or {IMAGE_TENSOR!r}), got {len(inputs)}",
        )
    (inp,) = inputs
    if inp.name == INPUT_TENSOR:
        want = list(info.input_shape)
        shape = inp.shape
        if len(shape) != 4 or shape[1:] != want or not 1 <= shape[0]:
            raise ApiError(
                400,
                f"input {INPUT_TENSOR!r}: shape {shape}, expected "
                f"[N, {', '.join(map(str, want))}] with N >= 1",
            )
        state.check_batch_size(shape[0], f"input {INPUT_TENSOR!r}")
        try:
            return await state.decode_pool.run(deadline, protocol.fp32_tensor, inp)
        except ProtocolError as exc:
            raise ApiError(400, str(exc)) from exc
    if inp.name == IMAGE_TENSOR:
        shape = inp.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise ApiError(
                400, f"input {IMAGE_TENSOR!r}: shape {shape}, expected [N] (or [N, 1]) with N >= 1"
            )
        state.check_batch_size(shape[0], f"input {IMAGE_TENSOR!r}")
        try:
            blobs = protocol.bytes_elements(inp)
        except ProtocolError as exc:
            raise ApiError(400, str(exc)) from exc
        sources = [(f"image[{i}]", data) for i, data in enumerate(blobs)]
        try:
            return await state.decode_pool.run(
                deadline, images_to_batch, sources, info.input_meta, state.settings.max_image_pixels
            )
        except InputError as exc:
            raise ApiError(400, str(exc)) from exc
    raise ApiError(
        400,
        f"unknown input {inp.name!r}; model {info.name!r} takes "
        f"{INPUT_TENSOR!r} (FP32 [N, C, H, W]) or {IMAGE_TENSOR!r} (BYTES [N])",
    )


def _output_tensors(
    info: ModelInfo,
    target: Target,
    probs: np.ndarray,
    routing: list[list[Any]] | None,
    outputs: list[RequestedOutput],
) -> list[ResponseOutput]:
    n = len(probs)
    tensors = []
    for out in outputs:
        binary = bool(out.binary)
        if out.name == PROBABILITIES:
            if out.classification is not None:
                strings = protocol.classification_strings(probs, info.labels, out.classification)
                tensors.append(
                    ResponseOutput(out.name, "BYTES", [n, out.classification], strings, binary)
                )
            else:
                tensors.append(
                    ResponseOutput(
                        out.name, "FP32", [n, info.num_classes], probs.astype(np.float32), binary
                    )
                )
            continue
        rows = routing or [[] for _ in range(n)]
        k = len(rows[0]) if rows else 0
        if out.name == EXPERTS:
            data = np.array([[c.expert for c in row] for row in rows], np.int32).reshape(n, k)
            tensors.append(ResponseOutput(out.name, "INT32", [n, k], data, binary))
        else:
            data = np.array([[c.weight for c in row] for row in rows], np.float32).reshape(n, k)
            tensors.append(ResponseOutput(out.name, "FP32", [n, k], data, binary))
    return tensors
