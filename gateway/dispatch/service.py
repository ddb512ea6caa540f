"""The completion service: parse, route, open the target (or its fallbacks), and answer.

The router only decides; this service carries the decision out. Targets are tried in the decision's
order while failures happen *before the first byte* and their error class ``falls_back`` (upstream
down, timeout, overloaded, an adapter that cannot be loaded): the one point where trying elsewhere
cannot duplicate output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any

from starlette.responses import Response

from gateway.accounting.ledger import CLIENT_LEFT, Accounting
from gateway.api.protocol import Endpoint, parse_request
from gateway.dispatch.answers import with_citations
from gateway.dispatch.backend import Backend, Call, Opened, PassToNextRule
from gateway.dispatch.shaping import request_features
from gateway.dispatch.streaming import BufferedAnswer, PassThroughStream
from gateway.embeddings import Embedder
from gateway.errors import ModelNotFound, RetrievalUnavailable, TurnoutError
from routing import Decision, RequestFeatures, RoutingTable, TargetKind, decide, explain

log = logging.getLogger("turnout.dispatch")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is asking and how to find the request again in logs; tenants will key on this."""

    request_id: str
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    started: float = field(default_factory=time.perf_counter)  # when the request arrived (perf_counter)


@dataclass(slots=True)
class Routed:
    data: dict[str, Any]
    stream: bool
    features: RequestFeatures
    decision: Decision
    table: RoutingTable  # the table this request was routed by (a reload may swap the service's own)


class CompletionService:
    """Serves completions by the current routing table (a reload swaps ``table`` in one assignment).

    Each request reads ``table`` once and keeps that table to the end, so a reload never changes the
    rules under a request that is halfway through them."""

    def __init__(
        self,
        table: RoutingTable,
        backends: Mapping[TargetKind, Backend],
        embedder: Embedder | None,
        accounting: Accounting,
    ) -> None:
        self.table = table
        self.backends = backends
        self.embedder = embedder
        self.accounting = accounting
        self.metrics = accounting.metrics

    async def features(
        self, endpoint: Endpoint, raw: bytes, ctx: RequestContext, table: RoutingTable
    ) -> tuple[dict[str, Any], bool, RequestFeatures]:
        data, request = parse_request(endpoint, raw)
        features = request_features(
            request, ctx.request_id, ctx.tenant, ctx.headers, conversation=table.needs_conversation(request.model)
        )
        if features.model not in table.models:
            raise ModelNotFound(
                f"The model {request.model!r} does not exist here; GET /v1/models lists the names it serves",
                param="model",
            )
        if table.needs_embedding(features.model):
            # One embedding per request: semantic conditions and retrieval share it.
            assert self.embedder is not None, "a table that needs embeddings is built with an embedder"
            embedding = await self.embedder.embed_query(features.text)
            features = replace(features, embedding=embedding)
        return data, bool(request.stream), features

    async def route(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Routed:
        table = self.table
        data, stream, features = await self.features(endpoint, raw, ctx, table)
        decision = decide(features, table)
        assert decision is not None  # the name was checked in features()
        return Routed(data, stream, features, decision, table)

    async def explain(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> dict[str, Any]:
        """What ``complete`` would decide for this body, and why, without calling any backend."""
        table = self.table
        _, _, features = await self.features(endpoint, raw, ctx, table)
        explained = explain(features, table)
        assert explained is not None
        return explained

    async def complete(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Response:
        ledger = self.accounting.open(endpoint, ctx.started)
        try:
            routed = await self.route(endpoint, raw, ctx)
            decision = routed.decision
            ledger.routed(routed.features.model, routed.data, routed.stream)
            self.metrics.decision(routed.features.model, decision.rule).inc()
            call = Call(endpoint, raw, routed.data, routed.features, ledger)
            if not routed.stream:
                # A non-streaming answer arrives only when generation is done: it is opened inside the
                # response, which watches the client meanwhile and stops the upstream if the client leaves.
                return BufferedAnswer(partial(self.open, call, routed, ctx), ledger)
            opened, headers = await self.open(call, routed, ctx)
        except TurnoutError as exc:
            ledger.fail(exc)
            raise
        except Exception:
            ledger.crash()  # a bug: the lane answers it with the 500 envelope
            raise
        except BaseException:
            ledger.finish(CLIENT_LEFT)  # cancelled: the client left while the stream was being opened
            raise
        headers["x-turnout-overhead-ms"] = f"{ledger.overhead_s() * 1000:.3f}"
        return PassThroughStream(opened, headers, ledger, opened.citations)

    async def open(self, call: Call, routed: Routed, ctx: RequestContext) -> tuple[Opened, dict[str, str]]:
        """Open the answer for the decision, following rules that pass the request on."""
        decision = routed.decision
        passed: list[str] = []
        while True:
            try:
                return await self._open_chain(call, decision, passed, ctx)
            except PassToNextRule as exc:
                # Retrieval came back empty and the rule passes the request on: the rules after it decide.
                log.info("request %s: rule %s passed the request on: %s", ctx.request_id, decision.rule, exc)
                if decision.rule == "default" or decision.rule in passed:
                    # the configuration check refuses this; never loop if it gets here anyway
                    raise TurnoutError(f"rule {decision.rule!r} passed the request on, but no rule follows") from exc
                passed.append(decision.rule)
                following = decide(routed.features, routed.table, after=decision.rule)
                assert following is not None
                decision = following

    async def _open_chain(
        self, call: Call, decision: Decision, passed: list[str], ctx: RequestContext
    ) -> tuple[Opened, dict[str, str]]:
        chain = decision.chain
        failed: list[str] = []
        for position, target in enumerate(chain):
            headers = {"x-turnout-route": target.label, "x-turnout-rule": decision.rule}
            if decision.policy is not None:
                headers["x-turnout-policy"] = decision.policy
            if passed:
                headers["x-turnout-passed-rules"] = ",".join(passed)
            if failed:
                headers["x-turnout-fallback-from"] = ",".join(failed)
            call.ledger.target = target
            try:
                opened = await self.backends[target.kind].open(target, call)
            except PassToNextRule:
                if position == 0:
                    raise
                failed.append(target.label)  # a fallback with nothing to say: try the next one
                self.metrics.fallbacks.labels(call.features.model, target.label, "empty_retrieval").inc()
                continue
            except TurnoutError as exc:
                if isinstance(exc, RetrievalUnavailable):
                    headers["x-turnout-degraded"] = "retrieval"
                if exc.falls_back and position + 1 < len(chain):
                    self.metrics.fallbacks.labels(call.features.model, target.label, exc.code or exc.error_type).inc()
                    log.warning(
                        "request %s: %s failed (%s), trying %s",
                        ctx.request_id,
                        target.label,
                        exc.code,
                        chain[position + 1].label,
                    )
                    failed.append(target.label + ("(retrieval)" if isinstance(exc, RetrievalUnavailable) else ""))
                    continue
                exc.headers.update(headers)
                raise
            call.ledger.opened = True
            headers.update(opened.headers)
            if any(label.endswith("(retrieval)") for label in failed):
                headers["x-turnout-degraded"] = "retrieval"
            if opened.citations is not None and not call.data.get("stream"):
                opened.finish = partial(with_citations, endpoint=call.endpoint, citations=opened.citations)
            return opened, headers
        raise AssertionError("a decision always has at least one target")  # pragma: no cover


__all__ = ["CompletionService", "RequestContext", "Routed"]
