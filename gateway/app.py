"""The FastAPI application: routers, error handlers, and the lifespan that builds the components."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from gateway.api import admin, completions, health, models
from gateway.api.errors import install_error_handlers
from gateway.api.middleware import RequestIdMiddleware
from gateway.components import build_components
from gateway.config import TurnoutConfig


def create_app(config: TurnoutConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.components = await build_components(config, stack)
            yield

    app = FastAPI(
        title="Turnout",
        summary="OpenAI-compatible gateway: LoRA adapters on vLLM, RAG and OpenAI fine-tunes behind one policy",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    for module in (completions, models, health, admin):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    return app
