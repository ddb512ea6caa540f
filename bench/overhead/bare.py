"""The bare pass-through: the least a Python gateway can add, the reference Turnout is held to.

Starlette under uvicorn (uvloop, httptools, one worker, no access log), one ``aiohttp.ClientSession``
built at start-up (unlimited pooled keep-alive connections). Every POST is forwarded to the same path
upstream with its body and content type; the answer comes back unchanged: an SSE answer streamed as its
bytes arrive, anything else read whole and sent. No routing, no parsing, no metrics.

Usage: python bench/overhead/bare.py --port 8001 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build(upstream: str) -> Starlette:
    session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        yield
        await session.close()

    async def forward(request: Request) -> Response:
        assert session is not None
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        answer = await session.post(upstream + request.url.path, data=await request.body(), headers=headers)
        media_type = answer.headers.get("content-type", "application/json")
        if not media_type.startswith("text/event-stream"):
            async with answer:
                return Response(await answer.read(), answer.status, media_type=media_type)

        async def relay() -> AsyncIterator[bytes]:
            async with answer:
                async for chunk in answer.content.iter_any():
                    yield chunk

        return StreamingResponse(relay(), answer.status, media_type=media_type)

    async def health(request: Request) -> Response:
        return Response()

    routes = [Route("/health", health), Route("/{path:path}", forward, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, without /v1")
    args = parser.parse_args()
    uvicorn.run(
        build(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
