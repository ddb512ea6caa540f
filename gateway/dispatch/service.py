"""The completion service: parse, route, open the target (or its fallbacks), and answer.

The router only decides; this service carries the decision out. Targets are tried in the decision's
order while failures happen *before the first byte* and are retryable (upstream down, timeout, a
model the upstream lost), which is the one point where trying elsewhere cannot duplicate output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from starlette.responses import Response

from gateway.api.protocol import (
    UPSTREAM_PATHS,
    ChatCompletionRequest,
    Endpoint,
    last_user_text,
    parse_request,
)
from gateway.dispatch.backend import Backend
from gateway.dispatch.streaming import PassThroughStream
from gateway.errors import ModelNotFound, TurnoutError, UpstreamError
from routing import Decision, RequestFeatures, RoutingTable, TargetKind, decide

log = logging.getLogger("turnout.dispatch")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is asking and how to find the request again in logs; tenants will key on this."""

    request_id: str
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class CompletionService:
    def __init__(self, table: RoutingTable, backends: Mapping[TargetKind, Backend]) -> None:
        self.table = table
        self.backends = backends

    def route(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> tuple[dict[str, Any], bool, Decision]:
        """Parse and decide, without calling anything: the body, whether it streams, and the decision."""
        data, request = parse_request(endpoint, raw)
        features = RequestFeatures(
            model=request.model,
            tenant=ctx.tenant,
            headers=ctx.headers,
            metadata=request.metadata or {},
            user=request.user,
            text=last_user_text(request),
            message_count=len(request.messages) if isinstance(request, ChatCompletionRequest) else 1,
        )
        decision = decide(features, self.table)
        if decision is None:
            raise ModelNotFound(
                f"The model {request.model!r} does not exist here; GET /v1/models lists the names it serves",
                param="model",
            )
        return data, bool(request.stream), decision

    async def complete(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Response:
        data, stream, decision = self.route(endpoint, raw, ctx)
        path = UPSTREAM_PATHS[endpoint]
        chain = decision.chain
        for position, target in enumerate(chain):
            headers = {"x-turnout-route": target.label, "x-turnout-rule": decision.rule}
            body = raw if data.get("model") == target.name else _with_model(data, target.name)
            try:
                opened = await self.backends[target.kind].open(target, path, body)
            except UpstreamError as exc:
                if exc.retryable and position + 1 < len(chain):
                    log.warning(
                        "request %s: %s failed (%s), trying %s",
                        ctx.request_id,
                        target.label,
                        exc.code,
                        chain[position + 1].label,
                    )
                    continue
                exc.headers.update(headers)
                raise
            except TurnoutError as exc:
                exc.headers.update(headers)
                raise
            if stream:
                return PassThroughStream(opened, headers)
            try:
                content = await opened.response.read()
            finally:
                opened.close()
            return Response(content, opened.response.status, headers, opened.response.content_type)
        raise AssertionError("a decision always has at least one target")  # pragma: no cover


def _with_model(data: dict[str, Any], name: str) -> bytes:
    return orjson.dumps({**data, "model": name})


__all__ = ["CompletionService", "RequestContext"]
