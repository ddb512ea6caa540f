"""``GET /metrics``: the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import READ, ComponentsDep

router = APIRouter()


@router.api_route("/metrics", methods=READ)
async def metrics(parts: ComponentsDep) -> Response:
    return Response(parts.metrics.exposition(), media_type=parts.metrics.content_type)
