"""GET /metrics: the Prometheus text exposition of this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.service.metrics
    return Response(m.render(), media_type=m.content_type)
