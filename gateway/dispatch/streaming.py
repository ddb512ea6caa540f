"""Streaming an upstream answer to the client byte for byte, and stopping the upstream when they leave.

Starlette's StreamingResponse notices a disconnect only when it next writes (with ASGI spec 2.4) and
leaves closing the iterator to the garbage collector. Here the disconnect is watched actively and the
upstream connection is closed in ``finally`` at once, so vLLM aborts the generation it no longer
needs and the adapter lease is released exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.dispatch.backend import Opened
from gateway.errors import TurnoutError, UpstreamError, UpstreamTimeout

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
            await _until_done_or_disconnect(self._pump(send), receive)
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
        except Exception as exc:  # any backend's failure mid-stream (aiohttp, litellm) is told the same way
            # Headers are gone already, so the failure is told in-band, as an SSE error event the
            # openai client raises as an APIError, rather than as a silently truncated stream.
            log.warning("upstream stream broke off: %s", exc.__class__.__name__)
            error: TurnoutError
            if isinstance(exc, TurnoutError):
                error = exc
            elif isinstance(exc, TimeoutError):
                error = UpstreamTimeout("the upstream went silent mid-stream")
            else:
                error = UpstreamError(f"the upstream broke off the stream ({exc.__class__.__name__})")
            # end the half-sent event first, so the error is an event of its own the client can parse
            prefix = b"" if tail == b"\n\n" else b"\n\n"
            event = prefix + b"data: " + error.body() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class BufferedAnswer(Response):
    """A non-streaming answer: opened, read whole and sent, all while watching for the client to leave.

    A non-streaming generation can run for many seconds before the first byte. If the client gives up
    meanwhile, the upstream request is closed at once (vLLM aborts it) and the adapter lease released,
    instead of generating for no one. Errors before the answer is sent become the OpenAI envelope here,
    since the route has already returned this response.
    """

    def __init__(self, open_answer: Callable[[], Awaitable[tuple[Opened, dict[str, str]]]]) -> None:
        self.open_answer = open_answer
        self.status_code = 200
        self.background = None
        self.init_headers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opened: Opened | None = None

        async def deliver() -> None:
            nonlocal opened
            try:
                opened, headers = await self.open_answer()
                body = await opened.response.read()
                if opened.finish is not None:
                    body = opened.finish(body)
                status, content_type = opened.response.status, opened.response.content_type
            except TurnoutError as exc:
                status, content_type, body, headers = exc.status, "application/json", exc.body(), exc.headers
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            raw += [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})

        try:
            await _until_done_or_disconnect(deliver(), receive)
        finally:
            if opened is not None:
                opened.close()


async def _until_done_or_disconnect(work: Awaitable[None], receive: Receive) -> None:
    """Run ``work`` until it ends or the client disconnects, whichever comes first (the other is cancelled)."""
    try:
        async with anyio.create_task_group() as group:

            async def run() -> None:
                await work
                group.cancel_scope.cancel()

            group.start_soon(run)
            await _until_disconnect(receive)
            group.cancel_scope.cancel()
    except* OSError:
        pass  # the client went away mid-write (anyio groups it); the caller's finally releases the upstream


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
