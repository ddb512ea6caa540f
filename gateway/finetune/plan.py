"""``turnout plan``: what each route would cost and add in latency for a given traffic, before building it.

Per request, every route is priced by :class:`gateway.accounting.prices.PriceBook`, the arithmetic the
gateway meters requests with (self-hosted routes as apportioned GPU time, OpenAI per token, retrieval as
query embedding plus search), on the prompt that route really sends:

* **adapter**: the caller's prompt and answer on vLLM (an adapter costs the base model's GPU time);
* **base + system prompt**: the same with ``system_prompt_tokens`` more prompt, the usual way to teach a
  base model without training;
* **RAG + base** and **RAG + adapter**: ``top_k`` chunks of ``chunk_tokens`` more prompt, plus the query's
  embedding and one search;
* **OpenAI fine-tune**: the caller's prompt and answer at the fine-tune's price.

One-off costs: training (from a training file's tokens, as ``turnout finetune estimate`` prices it, or a
token count) for the adapter and the fine-tune, and embedding the corpus for RAG. The latency a route adds
is the retrieval (``retrieval_ms``: the query embedding and the search, as ``make bench-paths`` measures
them) and the extra prompt's prefill at the replica's prompt throughput. A break-even is the request count
(and days at the given traffic) after which a route's one-off cost is paid back by what it saves per
request against the base model with a system prompt, the route that needs nothing built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.accounting.prices import PriceBook

BASELINE = "base + system prompt"


@dataclass(frozen=True, slots=True)
class Traffic:
    requests_per_day: float
    prompt_tokens: int
    answer_tokens: int
    system_prompt_tokens: int = 2000
    corpus_tokens: int = 0
    top_k: int = 4
    chunk_tokens: int = 200
    retrieval_ms: float = 6.0


@dataclass(frozen=True, slots=True)
class Training:
    """One-off training costs, in dollars (0 when not known: no break-even is computed)."""

    adapter_usd: float = 0.0
    openai_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RoutePlan:
    route: str
    prompt_tokens: int
    usd_per_request: float
    one_off_usd: float
    added_ms: float
    requests_per_day: float

    @property
    def usd_per_1000(self) -> float:
        return self.usd_per_request * 1000

    @property
    def usd_per_month(self) -> float:
        return self.usd_per_request * self.requests_per_day * 30

    def break_even(self, baseline: RoutePlan) -> tuple[float, float] | None:
        """Requests (and days) after which this route's one-off cost is paid back against ``baseline``;
        None when it saves nothing per request (or costs nothing once)."""
        saving = baseline.usd_per_request - self.usd_per_request
        if self.one_off_usd <= 0 or saving <= 0:
            return None
        requests = math.ceil(self.one_off_usd / saving)
        return requests, requests / self.requests_per_day if self.requests_per_day > 0 else math.inf

    def describe(self, baseline: RoutePlan) -> dict[str, Any]:
        even = self.break_even(baseline)
        return {
            "route": self.route,
            "prompt_tokens": self.prompt_tokens,
            "usd_per_1000_requests": round(self.usd_per_1000, 6),
            "usd_per_month": round(self.usd_per_month, 2),
            "one_off_usd": round(self.one_off_usd, 4),
            "added_latency_ms": round(self.added_ms, 2),
            "break_even_requests": even[0] if even else None,
            "break_even_days": round(even[1], 4) if even else None,
        }


def plan(traffic: Traffic, prices: PriceBook, openai_model: str, training: Training) -> list[RoutePlan]:
    """Every route for ``traffic``, in a fixed order (the baseline, without anything to build, second)."""
    prompt, answer = traffic.prompt_tokens, traffic.answer_tokens
    prefill_ms = 1000 * prices.vllm_prompt_seconds_per_token
    context = traffic.top_k * traffic.chunk_tokens
    retrieval = prompt * prices.embedding_per_token + prices.search_per_query
    ingest = traffic.corpus_tokens * prices.embedding_per_token
    per_day = traffic.requests_per_day
    rag_cost = prices.generation(None, prompt + context, answer) + retrieval
    rag_ms = traffic.retrieval_ms + context * prefill_ms
    return [
        RoutePlan("adapter", prompt, prices.generation(None, prompt, answer), training.adapter_usd, 0.0, per_day),
        RoutePlan(
            BASELINE,
            prompt + traffic.system_prompt_tokens,
            prices.generation(None, prompt + traffic.system_prompt_tokens, answer),
            0.0,
            traffic.system_prompt_tokens * prefill_ms,
            per_day,
        ),
        RoutePlan("RAG + base", prompt + context, rag_cost, ingest, rag_ms, per_day),
        RoutePlan("RAG + adapter", prompt + context, rag_cost, ingest + training.adapter_usd, rag_ms, per_day),
        RoutePlan(
            f"OpenAI fine-tune ({openai_model})",
            prompt,
            prices.generation(openai_model, prompt, answer),
            training.openai_usd,
            0.0,
            per_day,
        ),
    ]


__all__ = ["BASELINE", "RoutePlan", "Traffic", "Training", "plan"]
