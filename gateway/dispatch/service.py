"""The completion service: parse, route, open the target (or its fallbacks), and answer.

The router only decides; this service carries the decision out. Targets are tried in the decision's
order while failures happen *before the first byte* and their error class ``falls_back`` (upstream
down, timeout, overloaded, an adapter that cannot be loaded): the one point where trying elsewhere
cannot duplicate output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from starlette.responses import Response

from gateway.api.protocol import UPSTREAM_PATHS, Endpoint, parse_request
from gateway.dispatch.backend import Backend
from gateway.dispatch.shaping import request_features, shape_body
from gateway.dispatch.streaming import PassThroughStream
from gateway.embeddings import Embedder
from gateway.errors import ModelNotFound, TurnoutError
from routing import Decision, RequestFeatures, RoutingTable, TargetKind, decide, explain

log = logging.getLogger("turnout.dispatch")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is asking and how to find the request again in logs; tenants will key on this."""

    request_id: str
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(slots=True)
class Routed:
    data: dict[str, Any]
    stream: bool
    features: RequestFeatures
    decision: Decision


class CompletionService:
    """Serves completions by the current routing table (a reload swaps ``table`` in one assignment)."""

    def __init__(self, table: RoutingTable, backends: Mapping[TargetKind, Backend], embedder: Embedder | None) -> None:
        self.table = table
        self.backends = backends
        self.embedder = embedder

    async def features(
        self, endpoint: Endpoint, raw: bytes, ctx: RequestContext
    ) -> tuple[dict[str, Any], bool, RequestFeatures]:
        data, request = parse_request(endpoint, raw)
        features = request_features(request, ctx.request_id, ctx.tenant, ctx.headers)
        table = self.table
        if features.model not in table.models:
            raise ModelNotFound(
                f"The model {request.model!r} does not exist here; GET /v1/models lists the names it serves",
                param="model",
            )
        if table.needs_embedding(features.model):
            # One embedding per request: semantic conditions (and, later, retrieval) share it.
            assert self.embedder is not None, "a table that needs embeddings is built with an embedder"
            embedding = await self.embedder.embed_query(features.text)
            features = replace(features, embedding=embedding)
        return data, bool(request.stream), features

    async def route(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Routed:
        data, stream, features = await self.features(endpoint, raw, ctx)
        decision = decide(features, self.table)
        assert decision is not None  # the name was checked in features()
        return Routed(data, stream, features, decision)

    async def explain(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> dict[str, Any]:
        """What ``complete`` would decide for this body, and why, without calling any backend."""
        _, _, features = await self.features(endpoint, raw, ctx)
        explained = explain(features, self.table)
        assert explained is not None
        return explained

    async def complete(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Response:
        routed = await self.route(endpoint, raw, ctx)
        decision = routed.decision
        path = UPSTREAM_PATHS[endpoint]
        chain = decision.chain
        failed: list[str] = []
        for position, target in enumerate(chain):
            headers = {"x-turnout-route": target.label, "x-turnout-rule": decision.rule}
            if decision.policy is not None:
                headers["x-turnout-policy"] = decision.policy
            if failed:
                headers["x-turnout-fallback-from"] = ",".join(failed)
            body = shape_body(raw, routed.data, endpoint, target, target.name)
            try:
                opened = await self.backends[target.kind].open(target, path, body)
            except TurnoutError as exc:
                if exc.falls_back and position + 1 < len(chain):
                    log.warning(
                        "request %s: %s failed (%s), trying %s",
                        ctx.request_id,
                        target.label,
                        exc.code,
                        chain[position + 1].label,
                    )
                    failed.append(target.label)
                    continue
                exc.headers.update(headers)
                raise
            if routed.stream:
                return PassThroughStream(opened, headers)
            try:
                content = await opened.response.read()
            finally:
                opened.close()
            return Response(content, opened.response.status, headers, opened.response.content_type)
        raise AssertionError("a decision always has at least one target")  # pragma: no cover


__all__ = ["CompletionService", "RequestContext", "Routed"]
