"""``POST /v1/chat/completions``, ``POST /v1/completions`` and ``POST /v1/responses``: the hot path, as plain
Starlette routes (one per entry of :data:`gateway.protocol.requests.PATHS`).

These endpoints are what the gateway exists for, and every microsecond spent on them is added to
every request. They are ASGI endpoints in a plain Starlette ``Router`` in front of the FastAPI app, which
serves every other path (:func:`gateway.app.create_asgi_app`). Starlette routes rather than a hand-written
path dispatcher, and in front of FastAPI rather than inside it, because that is what measured at the
floor: FastAPI's middleware stack and router (telemetry checks, an exit stack, the exception
middleware) add about 8 µs to every request, the ``Router`` about 2.8 µs (``bench/glue.py``); with the
routes inside the FastAPI app, ``make bench-overhead`` missed its goal of 80% of the bare pass-through's
requests/s at concurrency 32 (77%), and in front it met every goal (81-86% over three runs; the
hand-written dispatcher this replaced measured 86%). Figures in ``bench/README.md``. FastAPI's own route
machinery (the ``Request`` object, dependency resolution) is skipped either way.

They go through the same request pipeline as every route (:mod:`gateway.api.pipeline`): admitted (id,
key, bounded body, context), handed to the completion service, the plain result sent by
:func:`gateway.api.responses.respond`, and every failure before the first byte rendered by
``pipeline.fail``, bugs by ``pipeline.bug``: the functions the FastAPI side's middleware, dependencies
and exception handlers call.
"""

from __future__ import annotations

from functools import partial

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.accounting.quotas import Charge, Quotas
from gateway.api import pipeline
from gateway.api.responses import respond
from gateway.components import Components
from gateway.dispatch.delivery import Completion
from gateway.errors import MethodNotAllowed, TurnoutError
from gateway.protocol.requests import PATHS, Endpoint


class CompletionEndpoint:
    """One completion endpoint, as an ASGI app (a Starlette route calls it with the raw scope)."""

    def __init__(self, endpoint: Endpoint, ids: pipeline.RequestIds) -> None:
        self.endpoint = endpoint
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = pipeline.admit(scope, send, self.ids)
        try:
            components: Components = scope["state"]["components"]
            try:
                await self._serve(components, scope, receive, sender)
            except TurnoutError as exc:
                await pipeline.fail(components, exc, scope["method"], scope["path"])(scope, receive, sender)
        except Exception as exc:
            await pipeline.bug(exc, scope, receive, sender)

    async def _serve(self, components: Components, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        who = pipeline.identify(components, headers.get("authorization"))
        body = await pipeline.read_body(components, receive, headers.get("content-length"))
        ctx = pipeline.context(scope, who, headers)
        quotas = components.quotas
        charges = quotas.charges(who.key_id, who.quota, who.tenant)
        if charges:  # a key or tenant with a quota: checked now, held once routed, settled when it ends
            admitted = await quotas.admit(charges)
        admission = components.admission  # the gateway's own work (parse, route, embed): a slot held for it
        if not admission.enter_now():  # (not ``async with``: two coroutines a request, measured at 0.4 µs)
            await admission.enter()
        try:
            completion = await components.service.complete(self.endpoint, body, ctx)
        finally:
            admission.leave()
        if charges:
            await _hold(quotas, charges, completion, admitted)
        await respond(completion, scope, receive, send)
        if completion.shadowed is not None:  # its answer is sent: the shadow arms run in the background
            components.shadows.offer(completion, charges)


async def _hold(quotas: Quotas, charges: list[Charge], completion: Completion, admitted: dict[str, str]) -> None:
    """Hold what the routed request may use against its quotas (429 if one is used up), settled by what it
    used when it ends; the rate-limit headers go with its answer."""
    ledger = completion.ledger
    tokens, dollars = ledger.most_it_may_use(completion.targets, quotas.reserve_output_tokens)
    try:
        hold = await quotas.hold(charges, tokens, dollars)
    except TurnoutError as exc:
        exc.add_headers(admitted)
        ledger.fail(exc)
        raise
    ledger.on_finish = partial(quotas.settle, hold)
    completion.headers = {**admitted, **hold.headers}


def completion_routes(ids: pipeline.RequestIds) -> list[Route]:
    """The completion paths, each also with a trailing slash (answered, not redirected), for every method
    (a wrong one gets the 405 envelope from the endpoint, not Starlette's plain-text page)."""
    routes = []
    for endpoint, path in PATHS.items():
        app = CompletionEndpoint(endpoint, ids)
        routes += [Route(path, app, name=endpoint), Route(path + "/", app)]
    return routes


__all__ = ["CompletionEndpoint", "completion_routes"]
