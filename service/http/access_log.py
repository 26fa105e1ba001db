"""Per-request plumbing, as one pure ASGI middleware: request id, body size limit,
in-flight gauge, request metrics, and the structured access log line.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: it does not buffer responses
or run the endpoint in another task, and it sees the body as it streams, so an
over-long body is refused after `max_body_bytes`, not after it was all read into
memory. Handlers add `model` and `precision` to `request.state`; the access line
and the request counter pick them up from there.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import ApiError
from service.http.metrics import UNKNOWN, Metrics

access_log = logging.getLogger("moe_alexnet.access")
REQUEST_ID_HEADER = "x-request-id"
# Echo client ids only when they are short and plain: they land in logs verbatim.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body is over the limit of {limit} bytes (setting MOE_MAX_BODY_BYTES)"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestMiddleware:
    """See the module docstring; one instance wraps the whole app."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state = scope.setdefault("state", {})
        given = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = given if given and REQUEST_ID_RE.match(given) else str(uuid.uuid4())
        state["request_id"] = request_id
        state["started"] = started
        status = {"code": 500, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            refusal = self._check_length(scope)
            if refusal is not None:
                status["code"] = refusal.status
                await _send_error(send_wrapper, refusal)
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self._finish(scope, state, status["code"], started)

    def _check_length(self, scope: Scope) -> ApiError | None:
        length = _header(scope, b"content-length")
        if length is None:
            return None
        try:
            n = int(length)
        except ValueError:
            return ApiError(400, f"invalid Content-Length header {length!r}")
        if n > self.max_body_bytes:
            return BodyTooLarge(self.max_body_bytes)
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive (chunked bodies have no Content-Length)."""
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped

    def _finish(self, scope: Scope, state: dict[str, Any], code: int, started: float) -> None:
        duration = time.monotonic() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        model = state.get("model") or UNKNOWN
        precision = state.get("precision") or UNKNOWN
        self.metrics.requests.labels(template, model, precision, str(code)).inc()
        self.metrics.request_duration.labels(template, model).observe(duration)
        client = scope.get("client")
        access_log.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            code,
            extra={
                "fields": {
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "path": scope["path"],
                    "model": state.get("model"),
                    "precision": state.get("precision"),
                    "status": code,
                    "duration_ms": round(duration * 1e3, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                }
            },
        )


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps({"error": error.message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- log output ----------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


JsonFormatter.converter = time.gmtime


def configure_logging(level: str) -> None:
    """JSON lines on stderr for our loggers and uvicorn's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the access line is ours
