"""``POST /v1/chat/completions`` and ``POST /v1/completions``: the hot path, as plain Starlette routes.

These two endpoints are what the gateway exists for, and every microsecond spent on them is added to
every request. They are ASGI endpoints registered as ordinary Starlette ``Route``s in the FastAPI app,
so they share the app's middleware (request id, bugs) and exception handlers (the error envelope) with
every other route, but skip what FastAPI adds to its own routes: the ``Request`` object, dependency
resolution and response models, which, profiled under load, cost more per request than the gateway's
own routing, accounting and upstream call together. Measured on a trivial endpoint here, the app's
middleware and router add about 8 µs per request, against about 0.2 µs for the hand-written dispatcher
this replaced; ``make bench-overhead`` shows the difference is within the run-to-run noise of a full
request (see ``bench/README.md``), so the one pipeline wins.

Each request is admitted through :mod:`gateway.api.pipeline` (key, bounded body, context), handed to
the completion service, and the plain result sent by :func:`gateway.api.responses.respond`. Every
failure before the first byte is raised, and rendered by the pipeline.
"""

from __future__ import annotations

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api import pipeline
from gateway.api.responses import respond
from gateway.components import Components
from gateway.errors import MethodNotAllowed
from gateway.protocol.requests import PATHS, Endpoint


class CompletionEndpoint:
    """One completion endpoint, as an ASGI app (a Starlette route calls it with the raw scope)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        components: Components = scope["app"].state.components
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        who = pipeline.identify(components, headers.get("authorization"))
        body = await pipeline.read_body(components, receive, headers.get("content-length"))
        ctx = pipeline.context(scope, who, headers)
        completion = await components.service.complete(self.endpoint, body, ctx)
        await respond(completion, scope, receive, send)


def completion_routes() -> list[Route]:
    """The completion paths, each also with a trailing slash (answered, not redirected), for every method
    (a wrong one gets the 405 envelope from the endpoint, not Starlette's plain-text page)."""
    routes = []
    for endpoint, path in PATHS.items():
        app = CompletionEndpoint(endpoint)
        routes += [Route(path, app, name=endpoint), Route(path + "/", app, include_in_schema=False)]
    return routes


__all__ = ["CompletionEndpoint", "completion_routes"]
