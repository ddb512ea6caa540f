"""The application the server runs: the completion routes in a plain Starlette router, every other path
in the FastAPI app behind it (routers, error handlers, the request-id middleware), and the lifespan that
builds the components both use.

May import: everything in the gateway but the command line.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI
from starlette.routing import Router

from gateway.api import admin, embeddings, health, metrics, models, rag, route
from gateway.api.completions import completion_routes
from gateway.api.errors import install_error_handlers
from gateway.api.middleware import RequestIdMiddleware
from gateway.api.pipeline import RequestIds
from gateway.components import Components, build_components
from gateway.config import TurnoutConfig
from gateway.errors import TurnoutError
from gateway.fleet.discovery import Resolver
from gateway.fleet.placement import Placement

log = logging.getLogger("turnout")


def create_api(ids: RequestIds) -> FastAPI:
    """The FastAPI app of every path but the completions (its routes find the components in the request's
    state, where the lifespan puts them)."""
    api = FastAPI(
        title="Turnout",
        summary="OpenAI-compatible gateway: LoRA adapters on vLLM, RAG and OpenAI fine-tunes behind one policy",
        docs_url=None,
        redoc_url=None,
    )
    for module in (route, models, embeddings, rag, health, metrics, admin):
        api.include_router(module.router)
    install_error_handlers(api)
    api.add_middleware(RequestIdMiddleware, ids=ids)
    return api


def create_asgi_app(
    config: TurnoutConfig,
    config_path: Path | None = None,
    *,
    resolver: Resolver | None = None,
    placement: Placement | None = None,
) -> Router:
    """What the server runs: the completion routes first (see :mod:`gateway.api.completions` for why they
    are not FastAPI routes), then everything else in the FastAPI app. ``resolver`` and ``placement``: see
    :func:`gateway.components.build_components`."""
    ids = RequestIds()
    api = create_api(ids)

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[dict[str, Components]]:
        async with AsyncExitStack() as stack:
            components = await build_components(config, config_path, stack, resolver=resolver, placement=placement)
            # Everything built so far lives as long as the process: move it out of the collector's sight,
            # so a full collection under load scans the requests' garbage, not the whole heap (it
            # otherwise stalls every request in flight for 100-200 ms on this kind of machine).
            gc.collect()
            gc.freeze()
            _reload_on_sighup(components, stack)
            yield {"components": components}  # the server copies it into every request's scope["state"]

    # Whatever no completion route matches goes to the FastAPI app as it came (no redirect of slashes here:
    # FastAPI answers every other path, its 404s and 405s included, with the envelope).
    return Router(completion_routes(ids), redirect_slashes=False, default=api, lifespan=lifespan)


def _reload_on_sighup(components: Components, stack: AsyncExitStack) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await components.reload()
        except TurnoutError as exc:
            log.error("SIGHUP reload refused, the previous configuration keeps serving: %s", exc.message)

    def on_sighup() -> None:
        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    with suppress(NotImplementedError, RuntimeError):  # no signals on this platform or thread
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
