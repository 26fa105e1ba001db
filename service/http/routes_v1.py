"""POST /v1/classify: the simple JSON API (images in, top-k labels out)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from service.http.errors import ApiError
from service.http.image_batch import images_to_batch
from service.http.state import ServiceState
from service.images import InputError
from service.scores import top_predictions

router = APIRouter(tags=["v1"])


class Prediction(BaseModel):
    index: int = Field(examples=[281])
    label: str = Field(examples=["tabby"])
    score: float = Field(examples=[0.61])


class Expert(BaseModel):
    expert: int = Field(description="expert index", examples=[3])
    weight: float = Field(description="gate weight (an image's weights sum to 1)", examples=[0.72])


class Timings(BaseModel):
    queue: float = Field(description="waiting for a batch slot, ms")
    preprocess: float = Field(description="decoding and preprocessing, ms")
    inference: float = Field(description="device time of the batch this image ran in, ms")
    total: float = Field(description="request received to response ready, ms")


class Classification(BaseModel):
    model: str
    version: str
    precision: str
    device: str
    predictions: list[Prediction]
    experts: list[Expert] | None = Field(
        None, description="mixture-of-experts models only: the experts this image went to"
    )
    k: int | None = Field(None, description="mixture-of-experts models only: experts per image")
    dual_module: list[str] | None = Field(
        None, description="the layers run with their little modules (dual-module inference)"
    )
    timings_ms: Timings


class ErrorBody(BaseModel):
    error: str = Field(examples=["image: not a readable image (cannot identify image file)"])


EXAMPLE = {
    "model": "alexnet",
    "version": "1",
    "precision": "fp32",
    "device": "pthread-skylake-avx512-AMD EPYC",
    "predictions": [
        {"index": 281, "label": "tabby", "score": 0.61},
        {"index": 285, "label": "Egyptian cat", "score": 0.22},
    ],
    "timings_ms": {"queue": 2.1, "preprocess": 4.3, "inference": 31.0, "total": 38.2},
}

REQUEST_BODY = {
    "description": "One image as a raw body (Content-Type image/jpeg, image/png, ...), or "
    "multipart/form-data with one or more `image` file fields (several: the answer is a "
    "list, one classification per image, in order).",
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
                "required": ["image"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Classification | list[Classification],
        "content": {"application/json": {"example": EXAMPLE}},
        "description": "the classification (a list for several `image` fields)",
    },
    400: {"model": ErrorBody, "description": "bad image or parameter"},
    404: {"model": ErrorBody, "description": "unknown model"},
    413: {"model": ErrorBody, "description": "body over MOE_MAX_BODY_BYTES"},
    415: {"model": ErrorBody, "description": "not multipart/form-data nor image/*"},
    503: {"model": ErrorBody, "description": "loading, draining or queue full (Retry-After)"},
    504: {"model": ErrorBody, "description": "request deadline exceeded"},
}


class ModelEntry(BaseModel):
    name: str
    version: str
    classes: int
    input_shape: list[int] = Field(description="C, H, W the network takes")
    experts: int | None = Field(None, description="mixture-of-experts models only")
    k: int | None = Field(None, description="mixture-of-experts models only: the model's own k")
    dual_module_layers: list[str] = Field(description="layers with a little module on offer")


class ModelList(BaseModel):
    device: str
    precisions: list[str] = Field(description="loaded precisions (any of them, or auto)")
    default_precision: str = Field(description="used when a request names none")
    models: list[ModelEntry] = Field(description="the first is the default model")


def _k(value: str | None) -> int | str | None:
    """A query's k: an integer or "auto" (checked against the model by the state)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"k must be an integer or auto, got {value!r}") from None


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _source(i: int, count: int, filename: str | None) -> str:
    name = "image" if count == 1 else f"image[{i}]"
    if filename:
        name += f" ({filename[:100]})"
    return name


async def _read_images(request: Request, max_images: int) -> tuple[list[tuple[str, bytes]], bool]:
    """The request's encoded images and whether it used the batch (multipart) form.
    The multipart parser stops one file past `max_images`: the batch size check
    (`ServiceState.check_batch_size`) then says what the limit is."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_files=max_images + 1, max_fields=max_images + 1) as form:
            entries = form.getlist("image")
            if not entries:
                raise ApiError(400, "multipart body has no `image` file field")
            images = []
            for i, entry in enumerate(entries):
                if not isinstance(entry, UploadFile):
                    raise ApiError(400, f"field image[{i}] is text; send it as a file upload")
                images.append((_source(i, len(entries), entry.filename), await entry.read()))
        return images, len(images) > 1
    if media.startswith("image/"):
        return [("image", await request.body())], False
    body = await request.body()
    if not media and not body:
        raise ApiError(
            400,
            "empty request body: send an image (Content-Type image/*) or "
            "multipart/form-data with an `image` field",
        )
    shown = media or "none"
    raise ApiError(
        415,
        f"unsupported Content-Type {shown!r}: send an image with Content-Type "
        "image/* (image/jpeg, image/png, ...) or multipart/form-data with `image` "
        "fields",
    )


@router.get(
    "/v1/models",
    summary="The served models and the precisions they run at",
    response_model=ModelList,
    responses={503: {"model": ErrorBody, "description": "still loading"}},
)
async def list_models(request: Request) -> ModelList:
    """What a client may ask for: models, loaded precisions, experts and k."""
    state = _state(request)
    state.require_ready()
    models = [
        ModelEntry(
            name=info.name,
            version=info.version,
            classes=info.num_classes,
            input_shape=list(info.input_shape),
            experts=info.mixture.experts if info.mixture is not None else None,
            k=info.mixture.k if info.mixture is not None else None,
            dual_module_layers=list(info.dual_layers),
        )
        for info in state.engine.models.values()
    ]
    return ModelList(
        device=state.engine.device_name,
        precisions=list(state.engine.precisions),
        default_precision=state.default_precision,
        models=models,
    )


@router.post(
    "/v1/classify",
    summary="Classify one image or a batch of images",
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def classify(
    request: Request,
    model: Annotated[
        str | None,
        Query(description="model name (default: the first served)", examples=["alexnet"]),
    ] = None,
    precision: Annotated[
        str | None,
        Query(
            description="a loaded precision, or auto: the most accurate one predicted to "
            "meet the deadline (default: MOE_DEFAULT_PRECISION)",
            examples=["fp32"],
        ),
    ] = None,
    top_k: Annotated[
        int | None, Query(description="predictions per image, 1..classes (default 5)", examples=[5])
    ] = None,
    k: Annotated[
        str | None,
        Query(
            description="mixture-of-experts models only: experts per image, or auto: the "
            "most the deadline allows up to the model's own (default: the model's)",
            examples=["2"],
        ),
    ] = None,
    deadline_ms: Annotated[
        float | None,
        Query(
            description="answer within this many milliseconds or get a 504 (at most "
            "MOE_REQUEST_TIMEOUT_S); a request still queued at its deadline never runs",
            examples=[500],
        ),
    ] = None,
    dual_module: Annotated[
        str | None,
        Query(
            description="dual-module inference on these layers (comma list, 'all' or "
            "'none'; default: MOE_DUAL_MODULE): outputs a little module rules out are 0, "
            "their weights unread",
            examples=["fc6,fc7"],
        ),
    ] = None,
) -> JSONResponse:
    """Answers the top `top_k` classes with softmax scores, and where the time went."""
    state = _state(request)
    started = getattr(request.state, "started", time.monotonic())
    info = state.model(model)
    request.state.model = info.name
    target, top_k = state.target(info, precision, top_k, _k(k), dual_module)
    request.state.precision = target.precision
    timeout_s = state.client_timeout_s("deadline_ms", deadline_ms, 1e-3)

    images, batch_form = await _read_images(request, state.settings.max_batch_size)
    state.check_batch_size(len(images), "image")
    deadline = state.deadline(started, timeout_s)
    state.admit(target, len(images), deadline)  # before decoding: a doomed request costs little
    t0 = time.monotonic()
    try:
        batch = await state.decode_pool.run(
            deadline, images_to_batch, images, info.input_meta, state.settings.max_image_pixels
        )
    except InputError as exc:
        raise ApiError(400, str(exc)) from exc
    preprocess_ms = (time.monotonic() - t0) * 1e3
    result = await state.infer(target, batch, deadline)
    request.state.precision = result.precision or target.precision  # auto: the one it ran at
    timings = {
        "queue": round(result.queue_s * 1e3, 3),
        "preprocess": round(preprocess_ms, 3),
        "inference": round(result.compute_s * 1e3, 3),
        "total": round((time.monotonic() - started) * 1e3, 3),
    }
    answers = []
    for i, probs in enumerate(result.probs):
        answer: dict[str, Any] = {
            "model": info.name,
            "version": info.version,
            "precision": result.precision or target.precision,
            "device": state.engine.device_name,
            "predictions": top_predictions(probs, info.labels, top_k),
        }
        if result.k is not None:
            answer["k"] = result.k
        if result.routing is not None:
            answer["experts"] = [
                {"expert": c.expert, "weight": round(c.weight, 6)} for c in result.routing[i]
            ]
        if target.dual:
            answer["dual_module"] = list(target.dual)
        answer["timings_ms"] = timings
        answers.append(answer)
    return JSONResponse(answers if batch_form else answers[0])
