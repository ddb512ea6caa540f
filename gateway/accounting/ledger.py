"""One request's account: where the time went, which route served it, its usage and its cost.

A :class:`Ledger` is opened when a completion request arrives and recorded exactly once when its last
byte is sent (or the client leaves, or it fails): request count, duration, time to first token,
gateway overhead, upstream time, tokens and dollars go to the metrics together, under one set of
bounded labels.

Gateway overhead is the request's duration minus the time spent waiting on others: the upstream
(vLLM or OpenAI, from sending the request to its last byte), adapter loads, and retrieval (which has
its own histogram). What remains is the gateway's own work: parsing, routing, intent embedding,
shaping, accounting and writing to the client.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

from gateway.accounting.prices import PriceBook
from gateway.accounting.usage import TokenCounter, Usage, generated_texts
from gateway.api.protocol import Endpoint
from gateway.errors import TurnoutError
from gateway.metrics import NO_POLICY, NO_ROUTE, Metrics
from routing import Target, TargetKind

log = logging.getLogger("turnout.accounting")

_KEPT_EVENT_BYTES = 256 * 1024
CLIENT_LEFT = 499  # the status recorded when the client disconnects before the answer ends (nginx's)
SHUT_DOWN = 503  # the status recorded for a request the server stopped before it ended


def dollars(cost: float) -> str:
    """A dollar figure for a header: every digit of the float, in fixed point (never ``4.2e-06``)."""
    text = repr(cost)
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return text
    if exponent.startswith("-") and not mantissa.startswith("-"):
        # what repr writes as d.ddde-N for the small figures requests cost, spelt out (no Decimal needed)
        return "0." + "0" * (int(exponent[1:]) - 1) + mantissa.replace(".", "")
    return format(Decimal(text), "f")


class Accounting:
    """What every ledger shares: the metrics, the prices (swapped on reload) and the token counter."""

    def __init__(self, metrics: Metrics, prices: PriceBook, counter: TokenCounter) -> None:
        self.metrics = metrics
        self.prices = prices
        self.counter = counter
        self.in_flight = 0  # read by the gauge at scrape time: no lock taken per request
        metrics.in_flight.set_function(lambda: self.in_flight)

    def open(self, endpoint: Endpoint, started: float) -> Ledger:
        return Ledger(self, endpoint, started)

    def count_error(self, exc: TurnoutError) -> None:
        """An error answered outside any ledger (bad key, oversized body): counted once, by its code."""
        if not exc.counted:
            exc.counted = True
            self.metrics.errors.labels(exc.code or exc.error_type).inc()


class Ledger:
    __slots__ = (
        "accounts",
        "added_prompt",
        "cost",
        "data",
        "done",
        "embedding_tokens",
        "endpoint",
        "event_bytes",
        "events",
        "excluded_s",
        "first_token_at",
        "opened",
        "parts",
        "policy",
        "prices",
        "retrievals",
        "sent",
        "started",
        "stream",
        "stream_error",
        "target",
        "upstream_s",
        "usage",
        "wants_usage",
    )

    def __init__(self, accounts: Accounting, endpoint: Endpoint, started: float) -> None:
        self.accounts = accounts
        self.prices = accounts.prices  # the prices this request started with, whatever a reload does meanwhile
        self.endpoint = endpoint
        self.started = started
        self.policy = NO_POLICY
        self.data: dict[str, Any] = {}
        self.stream = False
        self.wants_usage = False
        self.target: Target | None = None
        self.opened = False  # a backend started generating (so there is something to pay for)
        self.sent = False  # the request went to the upstream, which may be generating without a word yet
        self.added_prompt: list[str] = []  # system prompts and retrieved context the gateway added
        self.upstream_s = 0.0
        self.excluded_s = 0.0  # adapter loads and retrieval: waits that are not the gateway's own work
        self.first_token_at: float | None = None
        self.retrievals = 0
        self.embedding_tokens = 0
        self.usage: Usage | None = None
        self.events: list[bytes] = []  # a stream's data events, kept for an estimate if no usage comes
        self.event_bytes = 0  # all of them, including those past the kept ones
        self.stream_error: TurnoutError | None = None  # an error the upstream reported inside the stream
        self.cost: float | None = None
        self.parts = (0.0, 0.0, 0.0)  # the cost's generation, embedding and search dollars, once settled
        self.done = False
        accounts.in_flight += 1

    def routed(self, policy: str, data: dict[str, Any], stream: bool) -> None:
        self.policy, self.data, self.stream = policy, data, stream
        options = data.get("stream_options")
        self.wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True

    @property
    def openai_model(self) -> str | None:
        target = self.target
        return target.name if target is not None and target.kind is TargetKind.OPENAI else None

    def overhead_s(self) -> float:
        return max(0.0, time.perf_counter() - self.started - self.upstream_s - self.excluded_s)

    def settle(self, usage: Usage | None) -> float:
        """Fix the usage (estimating it when the upstream gave none) and return the request's cost."""
        if self.cost is not None:
            return self.cost
        if usage is None and (self.opened or self.sent):
            usage = self._estimate()
        self.usage = usage
        prices = self.prices
        embedding = self.embedding_tokens * prices.embedding_per_token
        search = self.retrievals * prices.search_per_query
        generation = 0.0
        if usage is not None:
            generation = prices.generation(self.openai_model, usage.prompt, usage.completion, usage.cached)
        self.parts = (generation, embedding, search)
        self.cost = cost = generation + embedding + search
        return cost

    def keep_event(self, event: bytes) -> None:
        """Keep a stream event for an estimate, up to a bound; beyond it only its size is counted."""
        self.event_bytes += len(event)
        if self.event_bytes <= _KEPT_EVENT_BYTES:
            self.events.append(event)

    def _estimate(self) -> Usage:
        generated = generated_texts(self.endpoint, self.events)
        try:
            usage = self.accounts.counter.estimate(
                self.endpoint, self.data, generated, self.openai_model, self.added_prompt
            )
            kept = sum(len(event) for event in self.events)
            if self.event_bytes > kept > 0:  # a long stream keeps only its start: scale to the whole
                usage = Usage(usage.prompt, round(usage.completion * self.event_bytes / kept), estimated=True)
            return usage
        except Exception as exc:  # counting is best effort; the request itself has been answered
            log.warning("could not count tokens for an estimate (%s); counting characters", exc)
            chars = sum(len(text) for text in generated)
            return Usage(0, chars // 4, estimated=True)

    def fail(self, exc: TurnoutError) -> None:
        """The request ends with ``exc``: count it, and tell the client what was spent anyway."""
        self.accounts.count_error(exc)
        exc.headers["x-turnout-cost-usd"] = dollars(self.settle(None))
        self.finish(exc.status)

    def crash(self) -> None:
        """A bug ended the request (the client gets the 500 envelope): count it and record a 500."""
        if not self.done:
            self.accounts.metrics.errors.labels("internal_error").inc()
        self.finish(500)

    def finish(self, status: int) -> None:
        """Record the request (once): duration, overhead, TTFT, upstream time, tokens, dollars."""
        if self.done:
            return
        self.done = True
        metrics = self.accounts.metrics
        self.accounts.in_flight -= 1
        total = time.perf_counter() - self.started
        cost = self.settle(self.usage)
        target = self.target
        kind, label = (target.kind.value, target.label) if target is not None else (NO_ROUTE, NO_ROUTE)
        series = metrics.route(self.endpoint, self.policy, kind, label)
        series.requests(status).inc()
        overhead = max(0.0, total - self.upstream_s - self.excluded_s)
        if self.stream:
            series.duration_stream.observe(total)
            series.overhead_stream.observe(overhead)
        else:
            series.duration_whole.observe(total)
            series.overhead_whole.observe(overhead)
        if self.first_token_at is not None:
            series.ttft.observe(self.first_token_at - self.started)
        if self.opened and series.upstream is not None:
            series.upstream.observe(self.upstream_s)
        usage = self.usage
        if usage is not None:
            series.prompt_tokens.inc(usage.prompt)
            series.completion_tokens.inc(usage.completion)
            if usage.estimated:
                series.estimated.inc()
        if cost:  # each increment takes a lock: none for what is zero
            generation, embedding, search = self.parts
            if generation:
                series.cost_generation.inc(generation)
            if embedding:
                series.cost_embedding.inc(embedding)
            if search:
                series.cost_search.inc(search)


__all__ = ["CLIENT_LEFT", "SHUT_DOWN", "Accounting", "Ledger", "dollars"]
