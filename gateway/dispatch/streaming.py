"""Streaming an upstream answer to the client byte for byte, and stopping the upstream when they leave.

Starlette's StreamingResponse notices a disconnect only when it next writes (with ASGI spec 2.4) and
leaves closing the iterator to the garbage collector. Here the disconnect is watched actively and the
upstream connection is closed in ``finally`` at once, so vLLM aborts the generation it no longer
needs and the adapter lease is released exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.dispatch.backend import Opened
from gateway.errors import UpstreamError, UpstreamTimeout

log = logging.getLogger("turnout.stream")


class PassThroughStream(Response):
    def __init__(
        self,
        opened: Opened,
        headers: Mapping[str, str],
        transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
    ) -> None:
        self.opened = opened
        self.transform = transform
        self.status_code = opened.response.status
        self.media_type = opened.response.content_type
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def pump() -> None:
                    await self._pump(send)
                    group.cancel_scope.cancel()

                group.start_soon(pump)
                await _until_disconnect(receive)
                group.cancel_scope.cancel()
        except* OSError:
            pass  # the client went away mid-write (anyio groups it); finally closes the upstream
        finally:
            self.opened.close()

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        tail = b"\n\n"
        try:
            chunks = self.opened.response.chunks()
            if self.transform is not None:
                chunks = self.transform(chunks)
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                tail = chunk[-2:] or tail
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already, so the failure is told in-band, as an SSE error event the
            # openai client raises as an APIError, rather than as a silently truncated stream.
            log.warning("upstream stream broke off: %s", exc.__class__.__name__)
            error = (
                UpstreamTimeout("the upstream went silent mid-stream")
                if isinstance(exc, TimeoutError)
                else (UpstreamError("the upstream broke off the stream"))
            )
            # end the half-sent event first, so the error is an event of its own the client can parse
            prefix = b"" if tail == b"\n\n" else b"\n\n"
            event = prefix + b"data: " + error.body() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
