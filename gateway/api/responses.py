"""Sending a completion's answer to the client, streamed or whole, and stopping the upstream when they leave.

The service hands over a plain :class:`gateway.dispatch.delivery.Completion`; here it is opened and sent
while the client is watched. Starlette's StreamingResponse notices a disconnect only when it next writes
(with ASGI spec 2.4) and leaves closing the iterator to the garbage collector; a non-streaming generation
can run for many seconds before its first byte. So the disconnect is watched actively, for both kinds,
and the upstream connection is closed in ``finally`` at once: vLLM aborts the generation it no longer
needs, and the adapter lease is released exactly once.

How the request ended is told to its ledger here, the one place that knows: answered (its status),
the client left first (499), or the server stopped (503). An error before the first byte is raised, for
the pipeline to answer with the envelope; after it, the stream ends with an error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from contextlib import aclosing
from typing import Any

from starlette.types import Receive, Scope, Send

from gateway.accounting.ledger import CLIENT_LEFT, SHUT_DOWN
from gateway.api.pipeline import report
from gateway.dispatch.delivery import Completion, Delivery
from gateway.errors import TurnoutError

_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def respond(completion: Completion, scope: Scope, receive: Receive, send: Send) -> None:
    """Open ``completion``'s answer and send it, watching the client; record how the request ended."""
    ledger = completion.ledger
    delivery: Delivery | None = None
    delivered = False  # the whole answer reached the client (a stream: up to its [DONE])
    ended = CLIENT_LEFT  # how the request ended if it was not delivered

    async def deliver() -> None:
        nonlocal delivery, delivered
        delivery = opened = await completion.open()
        if not completion.stream:
            body = await opened.body()
            await send(_start(opened, [(b"content-length", str(len(body)).encode())]))
            await send({"type": "http.response.body", "body": body})
            delivered = True
            return
        await send(_start(opened, list(_STREAM_HEADERS)))
        last, clock = opened.last_events, time.perf_counter
        async with aclosing(opened.events()) as events:  # closed here, whatever stops the loop
            async for event in events:
                writing = clock()
                await send({"type": "http.response.body", "body": event, "more_body": True})
                ledger.waited_elsewhere(clock() - writing)  # a slow reader's pace is not the gateway's work
                if event.startswith(last):
                    delivered = True  # the client may hang up as soon as it has read [DONE] (or its like)
        delivered = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if opened.error is not None:
            report(opened.error, scope["method"], scope["path"], in_stream=True)

    try:
        await until_done_or_disconnect(deliver(), receive)
    except asyncio.CancelledError:
        ended = SHUT_DOWN
        raise
    except TurnoutError:
        raise  # before the first byte: the ledger has it; the pipeline answers it with the envelope
    except Exception:
        ledger.crash()  # a bug: the middleware answers it with the 500 envelope
        raise
    finally:
        if delivery is not None:
            delivery.close()
        ledger.finish(delivery.status if delivered and delivery is not None else ended)


def _start(delivery: Delivery, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The response's start: ``headers``, the delivery's own (lower-case names already), its content type."""
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in delivery.headers.items()]
    content_type = delivery.content_type
    if content_type.startswith("text/") and "charset=" not in content_type:
        content_type += "; charset=utf-8"
    headers.append((b"content-type", content_type.encode("latin-1")))
    return {"type": "http.response.start", "status": delivery.status, "headers": headers}


# A request that ends sooner than this is never watched for a disconnect: starting the watch costs more
# than the rest of the gateway's work on a fast answer, and a generation worth stopping runs far longer.
# A client that leaves earlier is still noticed, as soon as the watch starts.
WATCH_AFTER_S = 0.02


async def until_done_or_disconnect(work: Coroutine[Any, Any, None], receive: Receive) -> bool:
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


__all__ = ["WATCH_AFTER_S", "respond", "until_done_or_disconnect"]
