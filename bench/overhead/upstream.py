"""A fast OpenAI-compatible upstream for the overhead benchmark: the floor every gateway is measured on.

A raw ASGI app under uvicorn (uvloop, httptools, one worker, no access log). It answers
``POST /v1/chat/completions`` and ``POST /v1/completions`` with a fixed small answer carrying ``usage``,
or, for ``"stream": true``, with a vLLM-shaped SSE stream: a role chunk (chat), ``--chunks`` content
chunks ``--gap-ms`` apart, a usage-only chunk (``"choices":[]``) when ``stream_options.include_usage`` is
true, then ``data: [DONE]``. JSON is compact, as vLLM writes it. The body is never parsed: two byte
patterns decide stream or not and usage or not, so the upstream costs as little as it can.

Also ``GET /v1/models``, ``GET /health`` and ``POST /v1/load_lora_adapter`` / ``unload_lora_adapter``.

Usage: python bench/overhead/upstream.py --port 8000 [--chunks 20] [--gap-ms 5] [--model bench-model]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STREAM = re.compile(rb'"stream"\s*:\s*true')
INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
CONTENT_MARK = "bench-tok"  # the load generator finds content chunks by this word
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Upstream:
    """Every answer is serialised once, at start-up; a request only picks and sends them."""

    def __init__(self, model: str, chunks: int, gap_s: float) -> None:
        self.gap_s = gap_s
        created = int(time.time())
        usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        text = " ".join(f"{CONTENT_MARK}-{i}" for i in range(chunks))
        self.models = compact(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": created,
                        "owned_by": "bench",
                        "root": model,
                        "parent": None,
                        "max_model_len": 4096,
                    }
                ],
            }
        )
        head = {"created": created, "model": model}
        self.chat = compact(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                **head,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
        self.text = compact(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                **head,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

        def event(value: dict[str, Any]) -> bytes:
            return b"data: " + compact(value) + b"\n\n"

        def last(i: int) -> str | None:
            return "stop" if i == chunks - 1 else None

        chat_head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", **head}
        text_head = {"id": "cmpl-bench", "object": "text_completion", **head}
        self.chat_role = event(
            {
                **chat_head,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            }
        )
        self.chat_chunks = [
            event(
                {
                    **chat_head,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": f"{CONTENT_MARK}-{i} "},
                            "logprobs": None,
                            "finish_reason": last(i),
                        }
                    ],
                }
            )
            for i in range(chunks)
        ]
        self.text_chunks = [
            event(
                {
                    **text_head,
                    "choices": [
                        {"index": 0, "text": f"{CONTENT_MARK}-{i} ", "logprobs": None, "finish_reason": last(i)}
                    ],
                }
            )
            for i in range(chunks)
        ]
        self.chat_usage = event({**chat_head, "choices": [], "usage": usage})
        self.text_usage = event({**text_head, "choices": [], "usage": usage})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST":
            body = await read_body(receive)
            if path == "/v1/chat/completions":
                await self.completion(send, body, chat=True)
            elif path == "/v1/completions":
                await self.completion(send, body, chat=False)
            elif path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                await respond(send, 200, b"Success", [(b"content-type", b"text/plain")])
            else:
                await respond(send, 404, b'{"error":"not found"}', JSON_HEADERS)
        elif path == "/v1/models":
            await respond(send, 200, self.models, JSON_HEADERS)
        elif path == "/health":
            await respond(send, 200, b"", [])
        else:
            await respond(send, 404, b'{"error":"not found"}', JSON_HEADERS)

    async def completion(self, send: Send, body: bytes, *, chat: bool) -> None:
        if not STREAM.search(body):
            await respond(send, 200, self.chat if chat else self.text, JSON_HEADERS)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        if chat:
            await send({"type": "http.response.body", "body": self.chat_role, "more_body": True})
        for chunk in self.chat_chunks if chat else self.text_chunks:
            await asyncio.sleep(self.gap_s)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        tail = b"data: [DONE]\n\n"
        if INCLUDE_USAGE.search(body):
            tail = (self.chat_usage if chat else self.text_usage) + tail
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    @staticmethod
    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause before each content chunk")
    args = parser.parse_args()
    app = Upstream(args.model, args.chunks, args.gap_ms / 1000)
    uvicorn.run(
        app,
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
