"""What the gateway's own Python costs per completion request, without sockets: the ASGI app called directly.

The app is the one ``turnout serve`` runs (``create_asgi_app``), started through its lifespan; only the
upstream is answered in memory (``Upstream.open`` and ``Upstream.request`` replaced in this process), so
the figure is routing, parsing, accounting, metrics and response writing, and nothing of the network or
of another process. Useful to compare two versions of the hot path on one machine: run it from each
checkout (``PYTHONPATH=CHECKOUT python bench/glue.py``), pinned to one core, and compare the best runs.

Usage: python bench/glue.py [--requests 10000] [--runs 5] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import orjson

import gateway.upstream.client as upstream_client
from gateway.app import create_asgi_app
from gateway.config import TurnoutConfig

MODEL = "bench-model"
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)
CHUNKS = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[{"index":0,'
    + b'"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n' % i
    for i in range(20)
] + [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":20,"total_tokens":23}}\n\ndata: [DONE]\n\n'
]


class MemoryAnswer:
    """An upstream answer already in memory (the interface of ``UpstreamResponse``)."""

    def __init__(self, stream: bool) -> None:
        self.status = 200
        self.content_type = "text/event-stream" if stream else "application/json"

    async def read(self) -> bytes:
        return ANSWER

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            yield chunk

    def close(self) -> None:
        return None


def answer_in_memory() -> None:
    async def open_(self: Any, path: str, body: bytes, *, model: str, request_id: str | None = None) -> Any:
        return MemoryAnswer(b'"stream":true' in body)

    async def request(self: Any, method: str, path: str, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        return 200, b'{"object":"list","data":[]}'

    upstream_client.Upstream.open = open_  # type: ignore[method-assign]
    upstream_client.Upstream.request = request  # type: ignore[method-assign]


async def measure(requests: int, runs: int, stream: bool) -> list[float]:
    answer_in_memory()
    config = TurnoutConfig.model_validate({"vllm": {"url": "http://127.0.0.1:9", "model": MODEL}})
    app = create_asgi_app(config, None)
    state: dict[str, Any] = {}
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    serving = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, lifespan.get, lifespan_send)
    )
    await lifespan.put({"type": "lifespan.startup"})
    await started.wait()
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        return None

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8080),
            "state": state.copy(),
        }

    for _ in range(min(requests, 3000)):  # warm-up
        await app(scope(), receive, send)
    figures = []
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(requests):
            await app(scope(), receive, send)
        figures.append((time.perf_counter() - began) / requests * 1e6)
    await lifespan.put({"type": "lifespan.shutdown"})
    await serving
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stream", action="store_true", help="streamed answers of 20 chunks instead")
    args = parser.parse_args()
    import uvloop

    figures = uvloop.run(measure(args.requests, args.runs, args.stream))
    kind = "streamed (20 chunks)" if args.stream else "non-streaming"
    print(
        f"gateway glue per {kind} chat request, upstream in memory: best {min(figures):.1f} µs "
        f"(runs: {', '.join(f'{f:.1f}' for f in figures)})"
    )


if __name__ == "__main__":
    main()
