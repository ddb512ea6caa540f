"""Shared helpers of the accounting tests: prices, targets, ledgers and fake stream upstreams."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from gateway.accounting.ledger import Accounting, Ledger
from gateway.config.model import (
    CostsConfig,
    OpenAICostConfig,
    RagCostConfig,
    TokenPriceConfig,
    VllmCostConfig,
)
from gateway.dispatch.answers import written_answer
from gateway.dispatch.events import accounted_events
from gateway.metrics import Metrics
from gateway.protocol.requests import Endpoint
from routing import Target, TargetKind

ROOT = Path(__file__).resolve().parents[2]


TOKENIZER = ROOT / ".turnout" / "assets" / "model" / "tokenizer.json"


GPU_HOUR = 3.6


GPUS = 2


PROMPT_TPS = 1000.0


COMPLETION_TPS = 100.0


PER_SECOND = GPU_HOUR * GPUS / 3600  # dollars per replica-second


EMBEDDING_PER_1M = 0.1


SEARCH_PER_QUERY = 0.001


BASE = Target(TargetKind.BASE, "tiny")


ADAPTER = Target(TargetKind.ADAPTER, "sql")


RAG = Target(TargetKind.RAG, "docs", generator=ADAPTER)


GPT = Target(TargetKind.OPENAI, "gpt-4o-mini")


GPT_PRICE = TokenPriceConfig(input=0.15, output=0.6, cached_input=0.075)


FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme::abc123"


def costs(
    gpu_hour_usd: float = GPU_HOUR,
    openai: dict[str, TokenPriceConfig] | None = None,
    embedding: float = EMBEDDING_PER_1M,
    search: float = SEARCH_PER_QUERY,
) -> CostsConfig:
    return CostsConfig(
        vllm=VllmCostConfig(
            gpu_hour_usd=gpu_hour_usd,
            gpus_per_replica=GPUS,
            prompt_tokens_per_second=PROMPT_TPS,
            completion_tokens_per_second=COMPLETION_TPS,
        ),
        openai=OpenAICostConfig(models=openai or {}),
        rag=RagCostConfig(embedding_usd_per_1m_tokens=embedding, search_usd_per_query=search),
    )


def vllm_cost(prompt: int, completion: int) -> float:
    """The README's formula, written out independently of the code under test."""
    return GPU_HOUR * GPUS / 3600 * (prompt / PROMPT_TPS + completion / COMPLETION_TPS)


def map_entry(prompt: float, completion: float, cached: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"input_cost_per_token": prompt, "output_cost_per_token": completion, "mode": "chat"}
    if cached is not None:
        entry["cache_read_input_token_cost"] = cached
    return entry


def litellm_file() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None, "litellm is not installed"
    assert spec.submodule_search_locations, "litellm is not a package"
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body)


TOKENIZER_TEXT = "Turnout routes each request to a LoRA adapter, to RAG, or to an OpenAI fine-tune."


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def route_labels(policy: str, target: Target | None) -> dict[str, str]:
    if target is None:
        return {"policy": policy, "route_kind": "none", "target": "none"}
    return {"policy": policy, "route_kind": target.kind.value, "target": target.label}


def requests_total(metrics: Metrics, endpoint: str, policy: str, target: Target | None, status: int) -> float | None:
    labels = {"endpoint": endpoint, **route_labels(policy, target), "status": str(status)}
    return sample(metrics, "turnout_requests_total", **labels)


CHAT_DATA: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "abcdefgh"}]}


def routed_ledger(
    accounting: Accounting,
    target: Target,
    *,
    stream: bool = False,
    opened: bool = True,
    data: dict[str, Any] | None = None,
    endpoint: Endpoint = "chat",
    policy: str = "tiny",
) -> Ledger:
    ledger = accounting.open(endpoint, time.perf_counter())
    ledger.routed(policy, dict(data if data is not None else CHAT_DATA, stream=stream), stream)
    ledger.trying(target)
    if opened:
        ledger.answer_opened()
    return ledger


ROLE_CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
)


USAGE_BODY: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "tiny",
    "choices": [],
    "usage": {"prompt_tokens": 500, "total_tokens": 550, "completion_tokens": 50},
}


USAGE_EVENT = b"data: " + orjson.dumps(USAGE_BODY)


DONE = b"data: [DONE]"


TEXT_EVENTS = [
    ROLE_CHUNK,
    chat_chunk({"content": "Hello"}),
    chat_chunk({"content": " world!"}),
    chat_chunk({}, finish="stop"),
]


def wire(*events: bytes) -> bytes:
    return b"".join(event + b"\n\n" for event in events)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def upstream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def relay(chunks: list[bytes], ledger: Ledger, citations: list[dict[str, Any]] | None = None) -> list[bytes]:
    return [event async for event in accounted_events(upstream(chunks), ledger, citations)]


def stream_ledger(accounting: Accounting, *, wants_usage: bool, endpoint: Endpoint = "chat") -> Ledger:
    data: dict[str, Any] = dict(CHAT_DATA) if endpoint == "chat" else {"model": "tiny", "prompt": "abcdefgh"}
    if wants_usage:
        data["stream_options"] = {"include_usage": True}
    ledger = routed_ledger(accounting, BASE, stream=True, data=data, endpoint=endpoint)
    assert ledger.wants_usage is wants_usage
    return ledger


def parsed(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: "), event
    assert event.endswith(b"\n\n"), event
    body = orjson.loads(event[len(b"data: ") : -2])
    assert isinstance(body, dict)
    return body


def last_chunk_with_usage() -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 500, "completion_tokens": 50, "total_tokens": 550},
    }
    return b"data: " + orjson.dumps(body)


class FakeTime:
    """Stands in for the ``time`` module where the accounting reads it: a clock only the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0


def continuous_usage_stream() -> list[bytes]:
    """vLLM with ``stream_options.continuous_usage_stats``: cumulative usage on every chunk, then the total."""

    def chunk(delta: dict[str, Any], completion: int, finish: str | None = None) -> bytes:
        body = parsed(chat_chunk(delta, finish) + b"\n\n")
        body["usage"] = {"prompt_tokens": 10, "total_tokens": 10 + completion, "completion_tokens": completion}
        return b"data: " + orjson.dumps(body)

    final = {**USAGE_BODY, "usage": {"prompt_tokens": 10, "total_tokens": 13, "completion_tokens": 3}}
    return [
        chunk({"role": "assistant", "content": ""}, 0),
        chunk({"content": "Hel"}, 1),
        chunk({"content": "lo"}, 2),
        chunk({}, 3, finish="stop"),
        b"data: " + orjson.dumps(final),
        DONE,
    ]


async def answer_events(endpoint: Endpoint, ledger: Ledger) -> list[bytes]:
    answer = written_answer(endpoint, "docs-bot", "I cannot answer that from the documents.", stream=True)
    return [event async for event in accounted_events(answer.chunks(), ledger, [])]


def refusal_ledger(accounting: Accounting, endpoint: Endpoint, wants_usage: bool) -> Ledger:
    data: dict[str, Any] = dict(CHAT_DATA) if endpoint == "chat" else {"model": "docs-bot", "prompt": "abcdefgh"}
    if wants_usage:
        data["stream_options"] = {"include_usage": True}
    ledger = routed_ledger(accounting, RAG, stream=True, data=data, endpoint=endpoint, policy="docs-bot")
    ledger.retrieved(0)
    return ledger
