"""The completion service's own logic: the fallback chain, rules passing a request on, and what it records.

The backends here are stubs that answer or fail as a test says (pure logic: the real backends are
driven in-process over sockets in the completion tests, and against real vLLM end to end); the
service, the routing table, the ledger and the metrics are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.accounting.ledger import Accounting
from gateway.dispatch.answers import StaticAnswer
from gateway.dispatch.backend import Call, Opened, PassToNextRule
from gateway.dispatch.service import CompletionService, RequestContext, RequestLimits
from gateway.errors import (
    InvalidRequest,
    ModelNotFound,
    RetrievalUnavailable,
    TurnoutError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.protocol.caps import InputCaps
from routing import RoutingTable, Target, TargetKind
from routing.spec import PolicySpec
from tests.unit.accounting_support import requests_total, sample, vllm_cost

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}], "usage": None}
DIRECT = {
    "tiny": Target(TargetKind.BASE, "tiny"),
    "formal": Target(TargetKind.ADAPTER, "formal"),
    "terse": Target(TargetKind.ADAPTER, "terse"),
}

CAPS = RequestLimits(InputCaps(max_messages=2048, max_message_chars=524_288, max_input_chars=524_288), 60.0)


class Stub:
    """A backend whose targets answer, fail with a given error, or pass the request on, by name."""

    def __init__(self, outcomes: dict[str, BaseException | None]) -> None:
        self.outcomes = outcomes
        self.opened: list[str] = []
        self.closed = 0

    async def open(self, target: Target, call: Call) -> Opened:
        self.opened.append(target.label)
        outcome = self.outcomes.get(target.name)
        if outcome is not None:
            raise outcome
        with call.ledger.sending():
            body = orjson.dumps({**ANSWER, "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
            return Opened(StaticAnswer(body, "application/json"), on_close=self._close)

    def _close(self) -> None:
        self.closed += 1


def service(
    policy: dict[str, Any], outcomes: dict[str, BaseException | None], accounting: Accounting
) -> tuple[CompletionService, Stub]:
    table = RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate(policy)}, "tiny", None)
    stub = Stub(outcomes)
    backends = {TargetKind.BASE: stub, TargetKind.ADAPTER: stub, TargetKind.RAG: stub}
    return CompletionService(table, backends, None, accounting, CAPS), stub


def body(model: str = "bot", **extra: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], **extra})


async def answer(svc: CompletionService, raw: bytes) -> tuple[dict[str, str], bytes]:
    completion = await svc.complete("chat", raw, RequestContext("req-1"))
    delivery = await completion.open()
    try:
        content = await delivery.body()
    finally:
        delivery.close()
    completion.ledger.finish(delivery.status)
    return delivery.headers, content


async def test_the_first_target_that_answers_serves_and_the_failed_ones_are_named(
    accounting: Accounting, metrics: Metrics
) -> None:
    down = UpstreamUnavailable("formal is down")
    svc, stub = service(
        {"default": "adapter:formal", "fallbacks": ["adapter:terse", "base"]}, {"formal": down}, accounting
    )
    headers, content = await answer(svc, body())
    assert stub.opened == ["adapter:formal", "adapter:terse"]
    assert headers["x-turnout-route"] == "adapter:terse"
    assert headers["x-turnout-fallback-from"] == "adapter:formal"
    assert headers["x-turnout-policy"] == "bot"
    assert float(headers["x-turnout-cost-usd"]) == pytest.approx(vllm_cost(3, 1), rel=1e-9)
    assert orjson.loads(content)["choices"][0]["message"]["content"] == "hi"
    assert stub.closed == 1
    labels = {"policy": "bot", "from_target": "adapter:formal", "reason": "upstream_unavailable"}
    assert sample(metrics, "turnout_fallbacks_total", **labels) == 1
    assert requests_total(metrics, "chat", "bot", Target(TargetKind.ADAPTER, "terse"), 200) == 1


async def test_an_exhausted_chain_raises_the_last_error_with_the_route_and_its_cost(
    accounting: Accounting, metrics: Metrics
) -> None:
    svc, stub = service(
        {"default": "adapter:formal", "fallbacks": ["base"]},
        {"formal": UpstreamUnavailable("formal is down"), "tiny": UpstreamUnavailable("base is down")},
        accounting,
    )
    completion = await svc.complete("chat", body(), RequestContext("req-1"))
    with pytest.raises(UpstreamUnavailable) as caught:
        await completion.open()
    assert stub.opened == ["adapter:formal", "base:tiny"]
    assert caught.value.message == "base is down"
    assert caught.value.headers["x-turnout-route"] == "base:tiny"
    assert caught.value.headers["x-turnout-fallback-from"] == "adapter:formal"
    assert caught.value.headers["x-turnout-cost-usd"] == "0"  # nothing was generated
    assert requests_total(metrics, "chat", "bot", Target(TargetKind.BASE, "tiny"), 503) == 1
    assert sample(metrics, "turnout_errors_total", type="upstream_unavailable") == 1


async def test_an_error_of_the_client_is_never_retried_elsewhere(accounting: Accounting) -> None:
    rejected = UpstreamRejected("max_tokens is too large", status=400)
    svc, stub = service({"default": "adapter:formal", "fallbacks": ["base"]}, {"formal": rejected}, accounting)
    completion = await svc.complete("chat", body(), RequestContext("req-1"))
    with pytest.raises(UpstreamRejected):
        await completion.open()
    assert stub.opened == ["adapter:formal"]


async def test_a_rule_that_passes_the_request_on_lets_the_next_rule_decide(accounting: Accounting) -> None:
    policy = {
        "rules": [
            {"name": "docs", "when": {"keywords": ["hello"]}, "target": "rag:docs+adapter:formal"},
            {"name": "greeting", "when": {"keywords": ["hello"]}, "target": "adapter:terse"},
        ],
        "default": "base",
    }
    empty = PassToNextRule("nothing scored high enough", {"x-turnout-retrieval": "empty"})
    svc, stub = service(policy, {"docs": empty}, accounting)
    headers, _ = await answer(svc, body())
    assert stub.opened == ["rag:docs+adapter:formal", "adapter:terse"]
    assert headers["x-turnout-rule"] == "greeting"
    assert headers["x-turnout-passed-rules"] == "docs"
    assert headers["x-turnout-retrieval"] == "empty"  # the answer says why the rule passed it on


async def test_retrieval_down_degrades_to_the_fallback_and_says_so(accounting: Accounting) -> None:
    policy = {"rules": [{"name": "docs", "target": "rag:docs", "fallbacks": ["adapter:terse"]}], "default": "base"}
    svc, _ = service(policy, {"docs": RetrievalUnavailable("store locked")}, accounting)
    headers, _ = await answer(svc, body())
    assert headers["x-turnout-route"] == "adapter:terse"
    assert headers["x-turnout-degraded"] == "retrieval"
    assert headers["x-turnout-fallback-from"] == "rag:docs+base:tiny(retrieval)"


@pytest.mark.parametrize(
    ("raw", "error"),
    [(b"{", InvalidRequest), (body("nobody"), ModelNotFound), (b'{"model": "bot", "messages": []}', InvalidRequest)],
)
async def test_refusals_are_recorded_before_they_are_raised(
    accounting: Accounting, metrics: Metrics, raw: bytes, error: type[TurnoutError]
) -> None:
    svc, stub = service({"default": "base"}, {}, accounting)
    with pytest.raises(error) as caught:
        await svc.complete("chat", raw, RequestContext("req-1"))
    assert caught.value.counted  # by the request's ledger: the pipeline does not count it again
    assert stub.opened == []
    assert requests_total(metrics, "chat", "none", None, caught.value.status) == 1
    assert sample(metrics, "turnout_in_flight_requests") == 0


async def test_a_reload_swaps_the_table_for_new_requests_only(accounting: Accounting) -> None:
    svc, stub = service({"default": "adapter:formal"}, {}, accounting)
    before = await svc.complete("chat", body(), RequestContext("req-1"))
    svc.swap(
        RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate({"default": "base"})}, "tiny", None), None, CAPS
    )
    after = await svc.complete("chat", body(), RequestContext("req-2"))
    for completion in (before, after):
        delivery = await completion.open()
        delivery.close()
        completion.ledger.finish(delivery.status)
    assert stub.opened == ["adapter:formal", "base:tiny"]  # the first request kept the table it started with


async def test_a_streamed_answer_that_breaks_off_ends_with_an_error_event(accounting: Accounting) -> None:
    class Breaking(StaticAnswer):
        async def chunks(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"index":0,"delta":{"content":"he'
            raise ConnectionResetError("gone")

    class Streams(Stub):
        async def open(self, target: Target, call: Call) -> Opened:
            self.opened.append(target.label)
            return Opened(Breaking(b"", "text/event-stream"))

    table = RoutingTable.build(DIRECT, {}, "tiny", None)
    svc = CompletionService(table, {TargetKind.BASE: Streams({})}, None, accounting, CAPS)
    completion = await svc.complete("chat", body("tiny", stream=True), RequestContext("req-1"))
    delivery = await completion.open()
    events = [event async for event in delivery.events()]
    assert delivery.status == 502  # the 200 already sent cannot change; the metrics record the failure
    assert delivery.error is not None
    assert delivery.error.code == "upstream_error"
    # the half event never reached the client (events are passed on whole): the error is the only event
    assert events == [b"data: " + delivery.error.body() + b"\n\n"]


async def test_a_request_cancelled_while_routed_is_recorded_as_the_server_stopping(
    accounting: Accounting, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing watches the client while a request is routed, so a cancellation there is a shutdown."""
    svc, _ = service({"default": "base"}, {}, accounting)
    routing = asyncio.Event()

    async def stalled(*args: Any) -> Any:
        routing.set()
        await asyncio.Event().wait()  # an embedding that never comes back

    monkeypatch.setattr(svc, "route", stalled)
    task = asyncio.create_task(svc.complete("chat", body(), RequestContext("req-1")))
    await routing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert requests_total(metrics, "chat", "none", None, 503) == 1
    assert sample(metrics, "turnout_in_flight_requests") == 0
