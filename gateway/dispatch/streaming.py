"""Streaming an upstream answer to the client byte for byte, and stopping the upstream when they leave.

Starlette's StreamingResponse notices a disconnect only when it next writes (with ASGI spec 2.4) and
leaves closing the iterator to the garbage collector. Here the disconnect is watched actively and the
upstream connection is closed in ``finally`` at once, so vLLM aborts the generation it no longer
needs and the adapter lease is released exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.accounting.ledger import CLIENT_LEFT, SHUT_DOWN, Ledger, dollars
from gateway.accounting.usage import usage_of_body
from gateway.dispatch.backend import Opened
from gateway.dispatch.events import accounted_events
from gateway.errors import TurnoutError, UpstreamError, UpstreamTimeout

log = logging.getLogger("turnout.stream")


class PassThroughStream(Response):
    def __init__(
        self,
        opened: Opened,
        headers: Mapping[str, str],
        ledger: Ledger,
        citations: list[dict[str, Any]] | None = None,
    ) -> None:
        self.opened = opened
        self.ledger = ledger
        self.delivered = False  # every upstream chunk reached the client
        self.citations = citations
        self.status_code = opened.response.status
        self.media_type = opened.response.content_type
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = CLIENT_LEFT
        try:
            await _until_done_or_disconnect(self._pump(send), receive)
        except asyncio.CancelledError:
            status = SHUT_DOWN
            raise
        except Exception:
            self.ledger.crash()
            raise
        finally:
            self.opened.close()
            # the client may hang up as soon as it has read [DONE], before the stream's formal end
            self.ledger.finish(self.status_code if self.delivered else status)

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        tail = b"\n\n"
        ledger, clock = self.ledger, time.perf_counter
        try:
            async for chunk in accounted_events(self.opened.response.chunks(), ledger, self.citations):
                writing = clock()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                ledger.excluded_s += clock() - writing  # a slow reader's pace is not the gateway's work
                tail = chunk[-2:] or tail
                if chunk.startswith(b"data: [DONE]"):
                    self.delivered = True
            self.delivered = True
            if ledger.stream_error is not None:  # the upstream said in-band that it failed
                ledger.accounts.count_error(ledger.stream_error)
                self.status_code = ledger.stream_error.status
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
            self.ledger.accounts.count_error(error)
            self.status_code = error.status  # as the request metrics see it: the stream failed
            self.delivered = True
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

    def __init__(self, open_answer: Callable[[], Awaitable[tuple[Opened, dict[str, str]]]], ledger: Ledger) -> None:
        self.open_answer = open_answer
        self.ledger = ledger
        self.status_code = 200
        self.background = None
        self.raw_headers = []  # the headers are made in __call__, once the answer is known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opened: Opened | None = None
        ledger = self.ledger
        status = CLIENT_LEFT

        async def deliver() -> None:
            nonlocal opened, status
            try:
                opened, headers = await self.open_answer()
                waited = time.perf_counter()
                body = await opened.response.read()
                ledger.upstream_s += time.perf_counter() - waited
                usage = usage_of_body(body)
                if usage is None:
                    ledger.keep_event(body)  # counted with the tokenizer instead
                headers["x-turnout-cost-usd"] = dollars(ledger.settle(usage))
                if ledger.usage is not None and ledger.usage.estimated:
                    headers["x-turnout-usage-estimated"] = "true"
                if opened.finish is not None:
                    body = opened.finish(body)
                status, content_type = opened.response.status, opened.response.content_type
                headers["x-turnout-overhead-ms"] = f"{ledger.overhead_s() * 1000:.3f}"
            except TurnoutError as exc:
                ledger.fail(exc)
                status, content_type, body, headers = exc.status, "application/json", exc.body(), exc.headers
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            raw += [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})

        completed = False
        try:
            completed = await _until_done_or_disconnect(deliver(), receive)
        except asyncio.CancelledError:
            status = SHUT_DOWN
            raise
        except Exception:
            ledger.crash()
            raise
        finally:
            if opened is not None:
                opened.close()
            ledger.finish(status if completed or status == SHUT_DOWN else CLIENT_LEFT)


# A request that ends sooner than this is never watched for a disconnect: starting the watch costs more
# than the rest of the gateway's work on a fast answer, and a generation worth stopping runs far longer.
# A client that leaves earlier is still noticed, as soon as the watch starts.
WATCH_AFTER_S = 0.02


async def _until_done_or_disconnect(work: Coroutine[Any, Any, None], receive: Receive) -> bool:
    """Run ``work`` until it ends or the client disconnects, whichever comes first; True if ``work`` ended.

    ``work`` runs in the calling task. Once it has run for ``WATCH_AFTER_S``, one small task waits for the
    disconnect and, if it comes first, cancels the caller, so ``work`` stops at whatever it awaits (an
    adapter load, the upstream) and its ``finally`` blocks run. (An anyio task group, or two tasks and
    ``asyncio.wait``, cost several times more on every request.)"""
    caller = asyncio.current_task()
    assert caller is not None
    loop = asyncio.get_running_loop()
    finished = left = False
    watcher: asyncio.Task[None] | None = None

    def on_disconnect(watch: asyncio.Task[None]) -> None:
        nonlocal left
        if not finished and not watch.cancelled() and watch.exception() is None:
            left = True
            caller.cancel()  # delivered at the caller's next step, inside ``work``

    def watch() -> None:
        nonlocal watcher
        if not finished:
            watcher = loop.create_task(_until_disconnect(receive))
            watcher.add_done_callback(on_disconnect)

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        await work
        return True
    except asyncio.CancelledError:
        if not left or caller.uncancel() > 0:
            raise  # cancelled from outside as well (the server is stopping): not ours to swallow
        return False
    except OSError:
        return False  # the client went away mid-write; the caller's finally releases the upstream
    finally:
        finished = True
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
