"""What the gateway's own Python costs per completion request, without sockets: the ASGI app called directly.

The app is the one ``turnout serve`` runs (``create_asgi_app``), started through its lifespan; only the
upstream is answered in memory (``Upstream.open`` and ``Upstream.request`` replaced in this process), so
the figure is routing, parsing, accounting, metrics and response writing, and nothing of the network or
of another process. Useful to compare two versions of the hot path on one machine: run it from each
checkout (``PYTHONPATH=CHECKOUT python bench/glue.py``), pinned to one core, and compare the best runs.

Each run measures, side by side, a request for the base model, for an adapter declared by its directory, and
for an adapter served from the adapter store (its version's vLLM name found per request); ``--target``
measures one of them.

Usage: python bench/glue.py [--requests 10000] [--runs 5] [--stream] [--target base|adapter|store]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import tempfile
import time
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson

import gateway.upstream.client as upstream_client
from gateway.adapters.store import AdapterStore
from gateway.app import create_asgi_app
from gateway.config import TurnoutConfig

MODEL = "bench-model"
TARGETS = {"base": MODEL, "adapter": "bench-adapter", "store": "bench-stored"}
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


def write_adapter(directory: Path) -> Path:
    """A minimal adapter the gateway's checks accept: its config and one rank-4 LoRA pair's header."""
    directory.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": MODEL}))
    prefix, size = "base_model.model.model.layers.0.self_attn.q_proj", 4 * 16 * 4
    header = {
        f"{prefix}.lora_A.weight": {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, size]},
        f"{prefix}.lora_B.weight": {"dtype": "F32", "shape": [16, 4], "data_offsets": [size, 2 * size]},
    }
    raw = json.dumps(header).encode()
    (directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(2 * size))
    return directory


def bench_config(folder: Path) -> TurnoutConfig:
    """The base model, an adapter by its directory, and one served from the store."""
    store = AdapterStore(folder / "store")
    version, _ = store.push(TARGETS["store"], write_adapter(folder / "stored"))
    store.activate(TARGETS["store"], version)
    adapters = {
        TARGETS["adapter"]: {"path": str(write_adapter(folder / "adapter"))},
        TARGETS["store"]: {"store": TARGETS["store"]},
    }
    data = {"vllm": {"url": "http://127.0.0.1:9", "model": MODEL}, "adapters": adapters}
    return TurnoutConfig.model_validate({**data, "adapter_store": {"path": str(store.root)}})


async def measure(requests: int, runs: int, stream: bool, model: str, folder: Path) -> list[float]:
    answer_in_memory()
    app = create_asgi_app(bench_config(folder), None)
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
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream})
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
    parser.add_argument("--target", choices=sorted(TARGETS), help="measure only this target (default: each)")
    args = parser.parse_args()
    import uvloop

    kind = "streamed (20 chunks)" if args.stream else "non-streaming"
    for target in [args.target] if args.target else list(TARGETS):
        with tempfile.TemporaryDirectory() as folder:
            figures = uvloop.run(measure(args.requests, args.runs, args.stream, TARGETS[target], Path(folder)))
        print(
            f"gateway glue per {kind} chat request to the {target} target, upstream in memory: best "
            f"{min(figures):.1f} µs (runs: {', '.join(f'{f:.1f}' for f in figures)})"
        )


if __name__ == "__main__":
    main()
