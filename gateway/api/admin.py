"""``/admin``: the gateway's own view of its state, and reloading its configuration."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from gateway.api.deps import READ, ComponentsDep, admin_identity
from gateway.errors import InvalidRequest
from gateway.evidence.html import render
from gateway.evidence.report import parse_since, report

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_identity)])


@router.api_route("/adapters", methods=READ)
async def adapters(parts: ComponentsDep) -> dict[str, Any]:
    """Per vLLM replica: health, requests in flight, and each adapter resident, loading or failed (why)."""
    return parts.fleet.snapshot()


@router.api_route("/circuits", methods=READ)
async def circuits(parts: ComponentsDep) -> dict[str, Any]:
    """Each upstream's circuit breaker: closed, half-open or open, recent failures, when it tries again."""
    return parts.circuits()


@router.api_route("/report", methods=READ, response_model=None)
async def evidence_report(
    parts: ComponentsDep, since: str = "24h", format: str = "json"
) -> dict[str, Any] | HTMLResponse:
    """Per policy and intent, each shadow arm's figures beside the primary's, and a recommendation
    (``format=html``: the self-contained page with plots)."""
    try:
        span = parse_since(since)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    if format not in ("json", "html"):
        raise InvalidRequest(f"format must be json or html, not {format!r}", param="format")
    runner = parts.shadows
    rows = await runner.store.rows(since=time.time() - span) if runner.has_evidence() else []
    groups = report(rows)
    if format == "html":
        return HTMLResponse(render(groups, rows, since))
    return {"since": since, "groups": [group.describe() for group in groups]}


@router.post("/reload")
async def reload(parts: ComponentsDep) -> dict[str, Any]:
    """Re-read the configuration file; a 400 envelope says what is wrong and nothing changes."""
    return await parts.reload()
