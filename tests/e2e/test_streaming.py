"""Streams pass through byte for byte, and a client that leaves mid-stream stops the generation in vLLM."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess
from tests.support.recorder import RecordingProxy
from tests.support.stack import ADAPTERS, BASE, gateway_config
from tests.support.waiting import until

LONG = {
    "messages": [{"role": "user", "content": "Tell a long story."}],
    "max_tokens": 480,
    "ignore_eos": True,
    "stream": True,
}


def _aborted_in_log(vllm: Any, request_id: str) -> bool:
    return any(
        "Aborted request(s)" in line and request_id in line
        for line in vllm.log_path.read_text(errors="replace").splitlines()
    )


def _events(stream: bytes) -> list[bytes]:
    return [event for event in stream.split(b"\n\n") if event]


def test_stream_bytes_are_unchanged(proxy: RecordingProxy, assets: Path, start_gateway: Any) -> None:
    """What the client receives is byte for byte what vLLM sent the gateway (seen by a recording proxy),
    except the usage event, which also carries the request's cost."""
    gateway = start_gateway(gateway_config(proxy.url, assets))
    for model in (BASE, ADAPTERS[1]):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        proxy.clear()
        received = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
        assert received.headers["content-type"].startswith("text/event-stream")
        sent = [c for c in proxy.calls if c.path == "/v1/chat/completions"]
        assert len(sent) == 1
        ours, theirs = _events(received.content), _events(bytes(sent[0].response))
        assert len(ours) == len(theirs)
        assert ours[:-2] == theirs[:-2]  # every content event, untouched
        assert ours[-1] == theirs[-1] == b"data: [DONE]"
        usage_event, upstream_usage = json.loads(ours[-2][6:]), json.loads(theirs[-2][6:])
        accounted = usage_event.pop("turnout")
        assert usage_event == upstream_usage  # the usage object is exactly vLLM's
        assert upstream_usage["usage"]["completion_tokens"] == 12
        assert accounted["estimated"] is False
        assert accounted["cost_usd"] > 0


def test_stream_without_usage_asked_gets_the_cost_but_no_usage(
    proxy: RecordingProxy, assets: Path, start_gateway: Any
) -> None:
    """The gateway asks vLLM for usage on every stream; a client that did not ask never sees it."""
    gateway = start_gateway(gateway_config(proxy.url, assets))
    body = {"model": BASE, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 8, "stream": True}
    proxy.clear()
    received = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
    sent = [c for c in proxy.calls if c.path == "/v1/chat/completions"]
    assert sent[0].body["stream_options"] == {"include_usage": True}
    events = [json.loads(e[6:]) for e in _events(received.content)[:-1]]
    assert all("usage" not in e or e["usage"] is None for e in events)
    closing = events[-1]
    assert closing["choices"] == []
    assert closing["turnout"]["cost_usd"] > 0
    assert closing["turnout"]["estimated"] is False
    assert all("turnout" not in e for e in events[:-1])


def _metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """The sum of the gateway's samples of ``name`` whose labels include ``labels``."""
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_client_disconnect_mid_stream_aborts_the_generation(vllm: Any, gateway: GatewayProcess) -> None:
    for model, kind in ((BASE, "base"), (ADAPTERS[0], "adapter")):
        _leave_a_stream_after_its_first_chunk(vllm, gateway, model, kind)


def _leave_a_stream_after_its_first_chunk(vllm: Any, gateway: GatewayProcess, model: str, kind: str) -> None:
    left = _metric(gateway, "turnout_requests_total", route_kind=kind, status="499")
    estimated = _metric(gateway, "turnout_usage_estimated_total", route_kind=kind)
    prompt = _metric(gateway, "turnout_tokens_total", route_kind=kind, direction="prompt")
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", gateway.url + "/v1/chat/completions", json={**LONG, "model": model}) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_bytes())
        found = re.search(rb'"id":"([^"]+)"', first)
        assert found, first
        request_id = found.group(1).decode()
    # The connection is closed here, after one chunk of a 480-token generation: vLLM must log that
    # it aborted this very request (it logs nothing of the kind for a request it completes).
    until(
        lambda: _aborted_in_log(vllm, request_id),
        lambda: httpx.get(vllm.url + "/health", timeout=5),  # paces the polling on a real round trip
        lambda: f"{model}: vLLM never aborted {request_id}:\n{vllm.log_tail()}",
    )
    # No usage came back for the abandoned stream: it is counted as a 499 with estimated usage.
    until(
        lambda: _metric(gateway, "turnout_requests_total", route_kind=kind, status="499") != left,
        lambda: None,  # each poll is a scrape of /metrics
        lambda: f"{model}: the gateway never recorded the abandoned stream",
    )
    assert _metric(gateway, "turnout_usage_estimated_total", route_kind=kind) == estimated + 1
    assert _metric(gateway, "turnout_tokens_total", route_kind=kind, direction="prompt") > prompt  # counted here


def test_client_leaving_a_non_streaming_request_aborts_the_generation(vllm: Any, gateway: GatewayProcess) -> None:
    request_id = "leaves-early-1"
    body = {**LONG, "model": BASE, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        # the 480-token answer takes seconds on the CPU; the client gives up long before
        httpx.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"x-request-id": request_id},
            timeout=httpx.Timeout(60, read=0.5),
        )
    until(
        lambda: _aborted_in_log(vllm, f"chatcmpl-{request_id}-"),
        lambda: httpx.get(vllm.url + "/health", timeout=5),  # paces the polling on a real round trip
        lambda: f"vLLM never aborted {request_id}:\n{vllm.log_tail()}",
    )
