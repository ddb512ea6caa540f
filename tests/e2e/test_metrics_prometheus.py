"""A real Prometheus scrapes the gateway while known traffic flows through every route kind; its HTTP API
then shows the request counts, tokens and dollars the clients were told, route by route."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.prometheus import PrometheusServer, Result
from tests.support.stack import BASE, FINE_TUNE, gateway_config

KEY = "sk-metrics-admin"
SEARCH_USD = 0.0001
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "When does the harbour office open?"}]
HARBOUR = "The harbour office opens at seven in the morning and closes at noon on Saturdays."


@dataclass
class Told:
    """What the clients of one route kind were told: requests, tokens and dollars."""

    requests: int = 0
    streams: int = 0
    prompt: int = 0
    completion: int = 0
    dollars: float = 0.0
    costs: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def metered(vllm: Any, assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("metered")
    config = gateway_config(vllm.url, assets)
    config["auth"] = {"keys": [{"key": KEY, "admin": True}]}
    config["openai"] = {"api_base": vllm.url + "/v1", "api_key": "sk-loopback"}
    config["rag"] = {"store": {"path": str(workdir / "qdrant")}, "collections": {"kb": {"score_threshold": 0.0}}}
    config["costs"]["rag"] = {"embedding_usd_per_1m_tokens": 20.0, "search_usd_per_query": SEARCH_USD}
    config["policies"] = {"hosted": {"default": f"openai:{FINE_TUNE}"}, "facts": {"default": "rag:kb"}}
    with GatewayProcess(config, workdir, localstack.free_port()) as process:
        ingested = httpx.post(
            process.url + "/v1/rag/collections/kb/documents",
            json={"documents": [{"id": "harbour", "title": "Harbour", "text": HARBOUR}]},
            headers={"authorization": f"Bearer {KEY}"},
            timeout=300,
        )
        assert ingested.status_code == 200, ingested.text
        yield process


def _send(client: openai.OpenAI, model: str, stream: bool, told: Told) -> None:
    told.requests += 1
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=PROMPT, max_tokens=5)
        answer = raw.parse()
        assert answer.usage is not None
        told.prompt += answer.usage.prompt_tokens
        told.completion += answer.usage.completion_tokens
        cost = float(raw.headers["x-turnout-cost-usd"])
        assert float(raw.headers["x-turnout-overhead-ms"]) >= 0
    else:
        told.streams += 1
        chunks = list(
            client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=5, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = [c.usage for c in chunks if c.usage is not None]
        assert len(usage) == 1, "exactly one usage object, as the client asked"
        told.prompt += usage[0].prompt_tokens
        told.completion += usage[0].completion_tokens
        closing = (chunks[-1].model_extra or {}).get("turnout")
        assert isinstance(closing, dict), "the last chunk carries the cost"
        assert closing["estimated"] is False
        cost = float(closing["cost_usd"])
    told.dollars += cost
    told.costs.append(cost)


def _by(label: str, result: Result) -> dict[str, float]:
    return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in result}


def test_prometheus_sees_the_traffic_tokens_and_dollars_of_every_route(metered: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=metered.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    told: dict[str, Told] = defaultdict(Told)
    plan = [("base", BASE), ("adapter", "formal"), ("rag", "facts"), ("openai", "hosted")]
    with PrometheusServer([f"127.0.0.1:{metered.port}"]) as prometheus:
        prometheus.wait_for("up", lambda r: _by("job", r).get("turnout") == 1.0)
        for kind, model in plan:
            for stream in (False, False, True):
                _send(client, model, stream, told[kind])
        expected = {kind: float(t.requests) for kind, t in told.items()}

        requests = prometheus.wait_for(
            'sum by (route_kind) (turnout_requests_total{status="200"})', lambda r: _by("route_kind", r) == expected
        )
        assert set(_by("route_kind", requests)) == {"base", "adapter", "rag", "openai"}

        for direction, attr in (("prompt", "prompt"), ("completion", "completion")):
            want = {kind: float(getattr(t, attr)) for kind, t in told.items()}
            tokens = prometheus.query(f'sum by (route_kind) (turnout_tokens_total{{direction="{direction}"}})')
            assert _by("route_kind", tokens) == want, direction

        dollars = _by("route_kind", prometheus.query("sum by (route_kind) (turnout_cost_dollars_total)"))
        for kind, t in told.items():
            assert all(cost > 0 for cost in t.costs), f"every {kind} request costs something"
            assert math.isclose(dollars[kind], t.dollars, rel_tol=1e-6), (kind, dollars[kind], t.dollars)

        rag = _by("component", prometheus.query('sum by (component) (turnout_cost_dollars_total{route_kind="rag"})'))
        assert math.isclose(rag["search"], 3 * SEARCH_USD, rel_tol=1e-9)
        assert rag["embedding"] > 0
        assert rag["generation"] > 0

        streams = {kind: float(t.streams) for kind, t in told.items()}
        ttft = _by("route_kind", prometheus.query("sum by (route_kind) (turnout_time_to_first_token_seconds_count)"))
        assert ttft == streams
        overhead = prometheus.query("sum(turnout_gateway_overhead_seconds_count)")
        assert float(overhead[0]["value"][1]) == sum(t.requests for t in told.values())
        decisions = _by("policy", prometheus.query('turnout_routing_decisions_total{rule="default"}'))
        assert decisions["facts"] == 3
        assert decisions["hosted"] == 3
        resident = _by("adapter", prometheus.query("turnout_adapter_resident"))
        assert resident["formal"] == 1.0
        retrievals = prometheus.query('turnout_retrieval_duration_seconds_count{collection="kb"}')
        assert float(retrievals[0]["value"][1]) == 3


def test_the_live_exposition_passes_promtool(metered: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=metered.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    _send(client, "facts", True, Told())
    with pytest.raises(openai.NotFoundError):  # an error series too
        client.chat.completions.create(model="no-such-model", messages=PROMPT)
    keyless = httpx.post(metered.url + "/v1/chat/completions/", json={"model": "facts"}, timeout=10)
    assert keyless.status_code == 401  # the trailing slash reaches the endpoint; the missing key is refused
    exposition = httpx.get(metered.url + "/metrics", timeout=10).content
    assert b'turnout_errors_total{type="model_not_found"}' in exposition
    refused = b'turnout_requests_total{endpoint="chat",policy="none",route_kind="none",status="401",target="none"}'
    assert refused in exposition
    assert b"no-such-model" not in exposition, "a caller's model name never becomes a label"
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is installed by `make tools`"
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr.decode() + checked.stdout.decode()
    assert (checked.stdout + checked.stderr).strip() == b"", "no lint messages at all"
