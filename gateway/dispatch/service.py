"""The completion service: parse, route, and carry the decision out (the target, or its fallbacks).

The router only decides; this service carries the decision out. Targets are tried in the decision's
order while failures happen *before the first byte* and their error class ``falls_back`` (upstream
down, timeout, overloaded, an adapter that cannot be loaded): the one point where trying elsewhere
cannot duplicate output.

``complete`` returns a plain :class:`gateway.dispatch.delivery.Completion`; turning it into a streamed
or buffered HTTP response is the HTTP layer's job alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any

from gateway.accounting.ledger import SHUT_DOWN, Accounting
from gateway.dispatch.backend import Backend, Call, Opened, PassToNextRule
from gateway.dispatch.deadlines import Deadlines
from gateway.dispatch.delivery import Completion
from gateway.dispatch.shadow_request import ShadowRequest
from gateway.dispatch.shaping import request_features
from gateway.embeddings import Embedder
from gateway.errors import ModelNotFound, RetrievalUnavailable, TurnoutError, UnsupportedEndpoint
from gateway.protocol.caps import InputCaps, check_input
from gateway.protocol.requests import Endpoint, parse_request
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


@dataclass(frozen=True, slots=True)
class _Serving:
    """What a reload replaces, together: the routing table and the embedder its intents were embedded by."""

    table: RoutingTable
    embedder: Embedder | None
    limits: RequestLimits


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one request may carry, and how long it may wait for its answer's first byte."""

    input: InputCaps
    first_byte_timeout_s: float


class CompletionService:
    """Serves completions by the current routing table (a reload swaps it, with its embedder, in one step).

    Each request reads the table once and keeps it to the end, so a reload never changes the rules under
    a request that is halfway through them."""

    def __init__(
        self,
        table: RoutingTable,
        backends: Mapping[TargetKind, Backend],
        embedder: Embedder | None,
        accounting: Accounting,
        limits: RequestLimits,
    ) -> None:
        self._serving = _Serving(table, embedder, limits)
        self.deadlines = Deadlines()
        self.backends = backends
        self.accounting = accounting
        self.metrics = accounting.metrics

    @property
    def table(self) -> RoutingTable:
        return self._serving.table

    @property
    def embedder(self) -> Embedder | None:
        return self._serving.embedder

    def swap(self, table: RoutingTable, embedder: Embedder | None, limits: RequestLimits) -> None:
        """Route requests that arrive from now on by ``table`` (built with ``embedder``) and hold them to
        ``limits``: a reload."""
        self._serving = _Serving(table, embedder, limits)

    async def features(
        self, endpoint: Endpoint, raw: bytes, ctx: RequestContext, serving: _Serving
    ) -> tuple[dict[str, Any], bool, RequestFeatures]:
        table, embedder = serving.table, serving.embedder
        data, request = parse_request(endpoint, raw)
        check_input(data, serving.limits.input, len(raw))
        features = request_features(
            request, ctx.request_id, ctx.tenant, ctx.headers, conversation=table.needs_conversation(request.model)
        )
        if features.model not in table.models:
            raise ModelNotFound(
                f"The model {request.model!r} does not exist here; GET /v1/models lists the names it serves "
                "(one of kind 'embedding' answers POST /v1/embeddings only)",
                param="model",
            )
        if table.needs_embedding(features.model):
            # One embedding per request: semantic conditions and retrieval share it.
            assert embedder is not None, "a table that needs embeddings is built with an embedder"
            embedding = await embedder.embed_query(features.text)
            features = replace(features, embedding=embedding)
        return data, bool(request.stream), features

    async def route(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Routed:
        serving = self._serving
        data, stream, features = await self.features(endpoint, raw, ctx, serving)
        decision = decide(features, serving.table)
        assert decision is not None  # the name was checked in features()
        return Routed(data, stream, features, decision, serving.table)

    async def explain(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> dict[str, Any]:
        """What ``complete`` would decide for this body, and why, without calling any backend."""
        serving = self._serving
        _, _, features = await self.features(endpoint, raw, ctx, serving)
        explained = explain(features, serving.table)
        assert explained is not None
        return explained

    async def complete(self, endpoint: Endpoint, raw: bytes, ctx: RequestContext) -> Completion:
        """Parse and route the request and open its ledger; the answer is opened by ``Completion.open``.
        A request refused here (malformed, unknown model) is recorded in the ledger and raised."""
        ledger = self.accounting.open(endpoint, ctx.started)
        try:
            routed = await self.route(endpoint, raw, ctx)
        except TurnoutError as exc:
            ledger.fail(exc)
            raise
        except Exception:
            ledger.crash()  # a bug: answered with the 500 envelope
            raise
        except BaseException:
            # Cancelled: nothing watches the client while a request is routed, so it is the server stopping.
            ledger.finish(SHUT_DOWN)
            raise
        ledger.routed(routed.features.model, routed.data, routed.stream)
        self.metrics.decision(routed.features.model, routed.decision.rule).inc()
        call = Call(endpoint, raw, routed.data, routed.features, ledger)
        deadline = self._serving.limits.first_byte_timeout_s
        opener = partial(self._open_in_time, call, routed, ctx, deadline)
        completion = Completion(endpoint, routed.stream, ledger, opener, routed.decision.chain)
        if routed.decision.shadows:  # sampled: the answer is kept, to compare the shadow arms' with
            ledger.keeps_answer = True
            completion.shadowed = ShadowRequest(
                endpoint, raw, routed.data, routed.stream, routed.features, routed.decision, time.time()
            )
        return completion

    async def _open_in_time(
        self, call: Call, routed: Routed, ctx: RequestContext, timeout_s: float
    ) -> tuple[Opened, dict[str, str]]:
        """:meth:`open`, within ``timeout_s`` of the request's arrival (fallbacks, adapter loads and retrieval
        included); an answer that has begun is never cut by it."""
        deadlines = self.deadlines
        task = deadlines.enter(ctx.started + timeout_s)
        try:
            return await self.open(call, routed, ctx)
        except asyncio.CancelledError:
            deadlines.expired(task, timeout_s)
            raise
        finally:
            deadlines.leave(task)

    async def open(self, call: Call, routed: Routed, ctx: RequestContext) -> tuple[Opened, dict[str, str]]:
        """Open the answer for the decision, following rules that pass the request on."""
        decision = routed.decision
        passed: list[str] = []
        carried: dict[str, str] = {}  # what the rules that passed it on say (x-turnout-retrieval: empty)
        while True:
            try:
                return await self._open_chain(call, decision, passed, carried, ctx)
            except PassToNextRule as exc:
                # Retrieval came back empty and the rule passes the request on: the rules after it decide.
                log.info("request %s: rule %s passed the request on: %s", ctx.request_id, decision.rule, exc)
                carried.update(exc.headers)
                if decision.rule == "default" or decision.rule in passed:
                    # the configuration check refuses this; never loop if it gets here anyway
                    raise TurnoutError(f"rule {decision.rule!r} passed the request on, but no rule follows") from exc
                passed.append(decision.rule)
                following = decide(routed.features, routed.table, after=decision.rule)
                assert following is not None
                decision = following

    async def _open_chain(
        self, call: Call, decision: Decision, passed: list[str], carried: dict[str, str], ctx: RequestContext
    ) -> tuple[Opened, dict[str, str]]:
        chain = decision.chain
        failed: list[str] = []
        for position, target in enumerate(chain):
            headers = {**carried, "x-turnout-route": target.label, "x-turnout-rule": decision.rule}
            if decision.policy is not None:
                headers["x-turnout-policy"] = decision.policy
            if passed:
                headers["x-turnout-passed-rules"] = ",".join(passed)
            if failed:
                headers["x-turnout-fallback-from"] = ",".join(failed)
            call.ledger.trying(target)
            try:
                opened = await self.backends[target.kind].open(target, call)
            except PassToNextRule:
                if position == 0:
                    raise
                failed.append(target.label)  # a fallback with nothing to say: try the next one
                self.metrics.fallbacks.labels(call.features.model, target.label, "empty_retrieval").inc()
                continue
            except TurnoutError as raised:
                exc = _naming(raised, target.label, call.path)
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
                exc.add_headers(headers)
                if exc is not raised:
                    raise exc from raised
                raise
            call.ledger.answer_opened()
            headers.update(opened.headers)
            if any(label.endswith("(retrieval)") for label in failed):
                headers["x-turnout-degraded"] = "retrieval"
            return opened, headers
        raise AssertionError("a decision always has at least one target")  # pragma: no cover


def _naming(exc: TurnoutError, label: str, path: str) -> TurnoutError:
    """A target that does not serve the endpoint at all is named in the error, with the endpoint: the
    client's request was fine, the route was not."""
    if isinstance(exc, UnsupportedEndpoint):
        return UnsupportedEndpoint(f"{label} cannot serve POST {path}: {exc.message}")
    return exc


__all__ = ["CompletionService", "RequestContext", "Routed"]
