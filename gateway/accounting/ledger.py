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
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from gateway.accounting.prices import PriceBook
from gateway.accounting.usage import TokenCounter
from gateway.errors import ClientLeft, TurnoutError
from gateway.metrics import NO_POLICY, NO_ROUTE, Metrics
from gateway.protocol.requests import CHARS_PER_TOKEN, Endpoint, asks_usage
from gateway.protocol.usage import Usage, generated_texts, prompt_texts
from routing import Target, TargetKind

log = logging.getLogger("turnout.accounting")

_KEPT_EVENT_BYTES = 256 * 1024
CLIENT_LEFT = 499  # the status recorded when the client disconnects before the answer ends (nginx's)
SHUT_DOWN = 503  # the status recorded for a request the server stopped before it ended


def dollars(cost: float) -> str:
    """A dollar figure for a header: 10 significant digits in fixed point, never ``4.2e-06`` and no trailing
    zeros (``0.000005666666667``, ``0.001``, and ``0`` when nothing was spent)."""
    text = f"{cost:.10g}"
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return text
    if exponent.startswith("-") and not mantissa.startswith("-"):
        # written d.ddde-N for the small figures requests cost: spelt out (no Decimal needed)
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

    def use_prices(self, prices: PriceBook) -> None:
        """Price requests opened from now on with ``prices`` (a reload); open ledgers keep theirs."""
        self.prices = prices

    def open(self, endpoint: Endpoint, started: float, *, shadow: bool = False) -> Ledger:
        """The ledger of a request that arrived at ``started`` (``time.perf_counter()``); in flight until
        it finishes. A ``shadow`` call's ledger prices it but records nothing in the route metrics (the
        shadow runner records it in its own)."""
        self.in_flight += 1
        return Ledger(self, endpoint, started, shadow)

    def _closed(self) -> None:
        self.in_flight -= 1

    def count_error(self, exc: TurnoutError) -> None:
        """Count an error answered to a client, by its code: once, whoever sees it first (a client that
        left is not an error answered: its request is recorded as a 499)."""
        if not isinstance(exc, ClientLeft) and exc.claim_count():
            self.metrics.errors.labels(exc.code or exc.error_type).inc()


class Stopwatch:
    """A ``with`` block whose time is added to one of a ledger's totals: the upstream's (``upstream``) or
    waits on others."""

    __slots__ = ("_ledger", "_started", "_upstream")

    def __init__(self, ledger: Ledger, upstream: bool) -> None:
        self._ledger = ledger
        self._upstream = upstream
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        elapsed = time.perf_counter() - self._started
        if self._upstream:
            self._ledger._upstream_s += elapsed
        else:
            self._ledger._excluded_s += elapsed


class Sending:
    """The window in which the upstream has the request: it may be generating (and costing) without a
    word yet. A failure inside the window means nothing was generated; a cancellation (the client left)
    leaves the request at the upstream, so it still counts as sent."""

    __slots__ = ("_ledger", "_started")

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._started = 0.0

    def __enter__(self) -> None:
        self._ledger._sent = True
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        ledger = self._ledger
        ledger._upstream_s += time.perf_counter() - self._started
        if kind is not None and issubclass(kind, Exception):
            ledger._sent = False


class Ledger:
    """The account of one request. Everything that happens to it is told through a method; its totals
    are read through properties, so each rule about them is written once, here."""

    __slots__ = (
        "_added_prompt",
        "_cost",
        "_data",
        "_done",
        "_elsewhere_watch",
        "_embedding_tokens",
        "_event_bytes",
        "_events",
        "_excluded_s",
        "_first_token_at",
        "_opened",
        "_parts",
        "_policy",
        "_retrievals",
        "_sent",
        "_stream",
        "_stream_error",
        "_stream_failure",
        "_target",
        "_upstream_s",
        "_upstream_watch",
        "_usage",
        "_wants_usage",
        "accounts",
        "duration_s",
        "endpoint",
        "keeps_answer",
        "on_finish",
        "prices",
        "shadow",
        "started",
        "status",
    )

    def __init__(self, accounts: Accounting, endpoint: Endpoint, started: float, shadow: bool = False) -> None:
        self.accounts = accounts
        self.prices = accounts.prices  # the prices this request started with, whatever a reload does meanwhile
        self.endpoint = endpoint
        self.started = started
        self._policy = NO_POLICY
        self._data: dict[str, Any] = {}
        self._stream = False
        self._wants_usage = False
        self._target: Target | None = None
        self._opened = False  # a backend started generating (so there is something to pay for)
        self._sent = False  # the request went to the upstream, which may be generating without a word yet
        self._added_prompt: list[str] = []  # system prompts and retrieved context the gateway added
        self._upstream_s = 0.0
        self._excluded_s = 0.0  # adapter loads, retrieval, slow readers: waits that are not the gateway's work
        self._first_token_at: float | None = None
        self._retrievals = 0
        self._embedding_tokens = 0
        self._usage: Usage | None = None
        self._events: list[bytes] = []  # a stream's data events, kept for an estimate if no usage comes
        self._event_bytes = 0  # all of them, including those past the kept ones
        self._stream_error: TurnoutError | None = None  # an error the upstream reported inside the stream
        self._stream_failure: TurnoutError | None = None  # what the stream ended with after its first byte
        self._cost: float | None = None
        self._parts = (0.0, 0.0, 0.0)  # the cost's generation, embedding and search dollars, once settled
        self._done = False
        self.on_finish: Callable[[int, float], None] | None = None  # told (tokens, dollars) when it ends
        self.shadow = shadow
        self.keeps_answer = False  # keep a whole answer's body too (a shadowed request compares it)
        self.duration_s: float | None = None  # from arrival to the end, once finished
        self.status: int | None = None  # the status it was recorded with, once finished

    # --- what happened to the request, in the order it happens ---------------------------------------

    def routed(self, policy: str, data: dict[str, Any], stream: bool) -> None:
        """The request was parsed and routed by ``policy`` (the model name it asked for)."""
        self._policy, self._data, self._stream = policy, data, stream
        self._wants_usage = stream and asks_usage(data)

    def trying(self, target: Target) -> None:
        """The service is opening ``target`` (the decision's own, or a fallback)."""
        self._target = target

    def waiting_elsewhere(self) -> Stopwatch:
        """``with`` it around waits that are neither the gateway's work nor the upstream's: adapter loads,
        retrieval."""
        return Stopwatch(self, False)

    def waiting_upstream(self) -> Stopwatch:
        """``with`` it around reads of the upstream's answer."""
        return Stopwatch(self, True)

    def waited_upstream(self, seconds: float) -> None:
        """Time spent reading the upstream's answer, measured by the caller: for loops that run per chunk,
        where a ``with`` block would cost more than the read."""
        self._upstream_s += seconds

    def waited_elsewhere(self, seconds: float) -> None:
        """Like ``waited_upstream``, for waits on others (a slow client reading each chunk)."""
        self._excluded_s += seconds

    def sending(self) -> Sending:
        """``with`` it around handing the request to the upstream until its answer starts."""
        return Sending(self)

    def added_to_prompt(self, prompt: str | None) -> None:
        """The system prompt (and retrieved context) the gateway put in front of the client's prompt."""
        self._added_prompt = [prompt] if prompt else []

    def retrieved(self, embedding_tokens: int) -> None:
        """One retrieval, whose query embedding read ``embedding_tokens`` tokens (0 when not priced)."""
        self._retrievals += 1
        self._embedding_tokens += embedding_tokens

    def answer_opened(self) -> None:
        """A backend started answering: from here on there is generation to pay for."""
        self._opened = True

    def saw_usage(self, usage: Usage) -> None:
        """The upstream's own usage figures (the last ones count: continuous usage stats repeat them)."""
        self._usage = usage

    def saw_first_token(self) -> None:
        """Generated text reached the client (the first time counts)."""
        if self._first_token_at is None:
            self._first_token_at = time.perf_counter()

    def saw_stream_error(self, error: TurnoutError) -> None:
        """The upstream said inside the stream that it failed (the first such error counts)."""
        if self._stream_error is None:
            self._stream_error = error

    def stream_failed(self, error: TurnoutError) -> None:
        """The stream, already started, ended with ``error`` (told to the client in-band): counted, and
        the request recorded with its status."""
        self._stream_failure = error
        self.accounts.count_error(error)

    def keep_event(self, event: bytes) -> None:
        """Keep a stream event (or a whole answer) for an estimate, up to a bound; beyond it only its size
        is counted."""
        self._event_bytes += len(event)
        if self._event_bytes <= _KEPT_EVENT_BYTES:
            self._events.append(event)

    # --- what is read of it ----------------------------------------------------------------------------

    @property
    def target(self) -> Target | None:
        return self._target

    @property
    def wants_usage(self) -> bool:
        """The client asked for usage in its stream."""
        return self._wants_usage

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @property
    def cost(self) -> float | None:
        """Dollars, once settled."""
        return self._cost

    @property
    def stream_error(self) -> TurnoutError | None:
        """An error the upstream reported inside the stream (the first one)."""
        return self._stream_error

    @property
    def stream_failure(self) -> TurnoutError | None:
        """What the stream ended with after its first byte, if it failed."""
        return self._stream_failure

    @property
    def upstream_s(self) -> float:
        return self._upstream_s

    @property
    def excluded_s(self) -> float:
        return self._excluded_s

    @property
    def first_token_at(self) -> float | None:
        return self._first_token_at

    @property
    def sent(self) -> bool:
        return self._sent

    @property
    def added_prompt(self) -> list[str]:
        return list(self._added_prompt)

    @property
    def events(self) -> list[bytes]:
        """The events (or whole answer) kept for an estimate."""
        return list(self._events)

    @property
    def openai_model(self) -> str | None:
        target = self._target
        return target.name if target is not None and target.kind is TargetKind.OPENAI else None

    def overhead_s(self) -> float:
        return max(0.0, time.perf_counter() - self.started - self._upstream_s - self._excluded_s)

    def most_it_may_use(self, targets: Sequence[Target], answer_tokens: int) -> tuple[int, float]:
        """Tokens and dollars this routed request may use, as far as can be told before it runs: its prompt
        (4 characters a token) and its answer (``max_tokens``, else ``answer_tokens``; times ``n``) at the
        dearest of ``targets``' prices, with retrieval's embedding and search. Retrieved context is not
        known yet: the hold is settled by what the request really used."""
        texts, framing = prompt_texts(self.endpoint, self._data)
        prompt = sum(len(text) for text in texts) // CHARS_PER_TOKEN + framing
        data = self._data
        asked = data.get("max_completion_tokens") or data.get("max_tokens") or data.get("max_output_tokens")
        answer = asked if isinstance(asked, int) and asked > 0 else answer_tokens
        choices = data.get("n")
        if isinstance(choices, int) and choices > 1:
            answer *= choices
        prices, dearest = self.prices, 0.0
        for target in targets:
            cost = prices.generation(target.name if target.kind is TargetKind.OPENAI else None, prompt, answer)
            if target.kind is TargetKind.RAG:
                cost += prompt * prices.embedding_per_token + prices.search_per_query
            dearest = max(dearest, cost)
        return prompt + answer, dearest

    # --- how it ends ----------------------------------------------------------------------------------

    def settle(self, usage: Usage | None) -> float:
        """Fix the usage (estimating it when the upstream gave none) and return the request's cost."""
        if self._cost is not None:
            return self._cost
        if usage is None and (self._opened or self._sent):
            usage = self._estimate()
        self._usage = usage
        prices = self.prices
        embedding = self._embedding_tokens * prices.embedding_per_token
        search = self._retrievals * prices.search_per_query
        generation = 0.0
        if usage is not None:
            generation = prices.generation(self.openai_model, usage.prompt, usage.completion, usage.cached)
        self._parts = (generation, embedding, search)
        self._cost = cost = generation + embedding + search
        return cost

    def _estimate(self) -> Usage:
        generated = generated_texts(self.endpoint, self._events)
        try:
            usage = self.accounts.counter.estimate(
                self.endpoint, self._data, generated, self.openai_model, self._added_prompt
            )
            kept = sum(len(event) for event in self._events)
            if self._event_bytes > kept > 0:  # a long stream keeps only its start: scale to the whole
                usage = Usage(usage.prompt, round(usage.completion * self._event_bytes / kept), estimated=True)
            return usage
        except Exception as exc:  # counting is best effort; the request itself has been answered
            log.warning("could not count tokens for an estimate (%s); counting characters", exc)
            chars = sum(len(text) for text in generated)
            return Usage(0, chars // CHARS_PER_TOKEN, estimated=True)

    def fail(self, exc: TurnoutError) -> None:
        """The request ends with ``exc``: count it, and tell the client what was spent anyway."""
        self.accounts.count_error(exc)
        exc.add_headers({"x-turnout-cost-usd": dollars(self.settle(None))})
        self.finish(exc.status)

    def crash(self) -> None:
        """A bug ended the request (the client gets the 500 envelope): count it and record a 500."""
        if not self._done:
            self.accounts.metrics.errors.labels("internal_error").inc()
        self.finish(500)

    def finish(self, status: int) -> None:
        """Record the request (once): duration, overhead, TTFT, upstream time, tokens, dollars."""
        if self._done:
            return
        self._done = True
        metrics = self.accounts.metrics
        self.accounts._closed()
        self.status = status
        self.duration_s = total = time.perf_counter() - self.started
        cost = self.settle(self._usage)
        if self.shadow:  # priced and counted against quotas, but not a request of the routes' metrics
            if self.on_finish is not None:
                usage = self._usage
                self.on_finish(usage.prompt + usage.completion if usage is not None else 0, cost)
            return
        target = self._target
        kind, label = (target.kind.value, target.label) if target is not None else (NO_ROUTE, NO_ROUTE)
        series = metrics.route(self.endpoint, self._policy, kind, label)
        series.requests(status).inc()
        overhead = max(0.0, total - self._upstream_s - self._excluded_s)
        if self._stream:
            series.duration_stream.observe(total)
            series.overhead_stream.observe(overhead)
        else:
            series.duration_whole.observe(total)
            series.overhead_whole.observe(overhead)
        if self._first_token_at is not None:
            series.ttft.observe(self._first_token_at - self.started)
        if self._opened and series.upstream is not None:
            series.upstream.observe(self._upstream_s)
        usage = self._usage
        if usage is not None:
            series.prompt_tokens.inc(usage.prompt)
            series.completion_tokens.inc(usage.completion)
            if usage.estimated:
                series.estimated.inc()
        if self.on_finish is not None:
            self.on_finish(usage.prompt + usage.completion if usage is not None else 0, cost)
        if cost:  # each increment takes a lock: none for what is zero
            generation, embedding, search = self._parts
            if generation:
                series.cost_generation.inc(generation)
            if embedding:
                series.cost_embedding.inc(embedding)
            if search:
                series.cost_search.inc(search)


__all__ = ["CLIENT_LEFT", "SHUT_DOWN", "Accounting", "Ledger", "Sending", "Stopwatch", "dollars"]
