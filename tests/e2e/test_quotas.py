"""Quotas per key and per tenant against real vLLM, enforced by two gateways sharing one real Redis
(redis-server, Debian's package): requests per minute and a dollar budget hold across both, refused with
429, retry-after and the envelope naming the limit; an unreachable Redis fails open or closed as configured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localstack
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.config.fields import PACKAGED_EMBEDDER
from tests.support.gateway import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.stack import BASE, gateway_config

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
KEY_A, KEY_B = "sk-acme-one", "sk-acme-two"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _config(vllm_url: str, assets: Path, store: str, tenant: str = "acme", **limits: Any) -> dict[str, Any]:
    """Keys A and B of ``tenant`` (each test its own: they share one Redis), A with 3 requests a minute."""
    config = gateway_config(vllm_url, assets)
    config["auth"] = {
        "keys": [
            {"key": KEY_A, "tenant": tenant, "quota": {"requests_per_minute": 3}},
            {"key": KEY_B, "tenant": tenant},
            {"key": "sk-admin", "admin": True},
        ]
    }
    config["limits"] = {"store": store, **limits}
    return config


def _ask(gateway: GatewayProcess, key: str) -> Any:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=120)
    return client.chat.completions.create(model=BASE, messages=PROMPT, max_tokens=2)


def test_two_gateways_enforce_one_limit_through_redis(
    vllm: Any, assets: Path, redis: RedisServer, start_gateway: Any
) -> None:
    config = _config(vllm.url, assets, redis.url, tenants={"acme": {"usd_per_day": 1000}})
    first, second = start_gateway(config), start_gateway(config)
    for gateway in (first, second, first):  # three requests of key A's three a minute, on two gateways
        _ask(gateway, KEY_A)
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(second, KEY_A)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert "requests per minute" in refused.value.body["message"]
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    _ask(second, KEY_B)  # the same tenant's other key has no per-key limit, and acme's budget is far off


# One request of the tests below: ten prompt tokens given as ids and exactly two generated (min_tokens), so
# that what a request holds when routed is what it then uses: the figures do not depend on when holds settle.
IDS_PROMPT, ANSWER = [31, 32, 33, 34, 35, 36, 37, 38, 39, 40], 2
# A GPU at $3,600 an hour reading 1,000 tokens a second and writing 100: 10/1000 + 2/100 = $0.03 a request.
DEAR = {"vllm": {"gpu_hour_usd": 3600, "prompt_tokens_per_second": 1000, "completion_tokens_per_second": 100}}


async def _burst(gateways: tuple[GatewayProcess, ...], key: str, count: int) -> list[Any]:
    """``count`` requests at once, spread over ``gateways``: each one's response, or the error it raised."""

    async def one(gateway: GatewayProcess) -> Any:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=120)
        try:
            return await client.completions.with_raw_response.create(
                model=BASE, prompt=IDS_PROMPT, max_tokens=ANSWER, extra_body={"min_tokens": ANSWER}
            )
        except openai.APIStatusError as exc:
            return exc
        finally:
            await client.close()

    return await asyncio.gather(*(one(gateways[i % len(gateways)]) for i in range(count)))


@pytest.mark.parametrize(
    ("quota", "kind"), [({"usd_per_day": 0.075}, "insufficient_quota"), ({"tokens_per_minute": 30}, "tokens")]
)
def test_concurrent_requests_on_two_gateways_stop_exactly_at_the_figure(
    vllm: Any, assets: Path, redis: RedisServer, start_gateway: Any, quota: dict[str, Any], kind: str
) -> None:
    tenant = "initech" if kind == "tokens" else "hooli"
    config = _config(vllm.url, assets, redis.url, tenant, tenants={tenant: quota})
    config["costs"] = DEAR
    first, second = start_gateway(config), start_gateway(config)
    answers = asyncio.run(_burst((first, second), KEY_B, 8))
    served = [a for a in answers if not isinstance(a, openai.APIStatusError)]
    refused = [a for a in answers if isinstance(a, openai.APIStatusError)]
    # $0.03 (or 12 tokens) a request against $0.075 (or 30 tokens): the third crosses the figure, none follows
    assert len(served) == 3, [(a.status_code, a.message[:200]) for a in refused]
    for answer in served:
        completion = answer.parse()
        assert completion.usage.prompt_tokens == len(IDS_PROMPT)
        assert completion.usage.completion_tokens == ANSWER
        if kind == "insufficient_quota":
            assert float(answer.headers["x-turnout-cost-usd"]) == pytest.approx(0.03)
    for refusal in refused:
        assert refusal.status_code == 429
        assert isinstance(refusal.body, dict)
        assert refusal.body["type"] == kind
        assert f"tenant {tenant}" in refusal.body["message"]
        assert int(refusal.response.headers["retry-after"]) >= 1


def test_answers_carry_openais_rate_limit_headers(
    vllm: Any, assets: Path, redis: RedisServer, start_gateway: Any
) -> None:
    config = _config(vllm.url, assets, redis.url, "umbrella")
    config["auth"]["keys"][0]["quota"] = {"requests_per_minute": 5, "tokens_per_minute": 1000}
    gateway = start_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_A, max_retries=0, timeout=120)
    raw = client.completions.with_raw_response.create(
        model=BASE, prompt=IDS_PROMPT, max_tokens=ANSWER, extra_body={"min_tokens": ANSWER}
    )
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "4"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - len(IDS_PROMPT) - ANSWER)  # what it held
    assert headers["x-ratelimit-reset-tokens"].endswith("s")
    streamed = client.chat.completions.with_raw_response.create(model=BASE, messages=PROMPT, max_tokens=2, stream=True)
    assert streamed.headers["x-ratelimit-remaining-requests"] == "3"
    assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices) is not None


def test_embeddings_are_held_to_the_same_quotas(assets: Path, redis: RedisServer, start_gateway: Any) -> None:
    nowhere = f"http://127.0.0.1:{localstack.free_port()}"  # nothing here generates
    config = _config(nowhere, assets, redis.url, "soylent")
    config["auth"]["keys"][0]["quota"] = {"requests_per_minute": 2}
    config["auth"]["keys"][1]["quota"] = {"tokens_per_minute": 1}
    config["embeddings"] = {"model": PACKAGED_EMBEDDER, "serve": True}
    gateway = start_gateway(config)
    by_requests = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_A, max_retries=0, timeout=120)
    first = by_requests.embeddings.with_raw_response.create(model=PACKAGED_EMBEDDER, input="hello there")
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    by_requests.embeddings.create(model=PACKAGED_EMBEDDER, input="hello there")
    with pytest.raises(openai.RateLimitError) as refused:
        by_requests.embeddings.create(model=PACKAGED_EMBEDDER, input="hello there")
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["type"] == "requests"
    by_tokens = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_B, max_retries=0, timeout=120)
    answered = by_tokens.embeddings.create(model=PACKAGED_EMBEDDER, input="hello there")  # 0 of 1 used before it
    assert answered.usage.prompt_tokens > 1
    with pytest.raises(openai.RateLimitError) as spent:
        by_tokens.embeddings.create(model=PACKAGED_EMBEDDER, input="hello there")
    assert isinstance(spent.value.body, dict)
    assert spent.value.body["type"] == "tokens"
    assert f"used {answered.usage.prompt_tokens}" in spent.value.body["message"]


def test_a_tenants_dollar_budget_stops_spending_on_every_gateway(
    vllm: Any, assets: Path, redis: RedisServer, start_gateway: Any
) -> None:
    config = _config(vllm.url, assets, redis.url, "globex", tenants={"globex": {"usd_per_day": 0.0000001}})
    first, second = start_gateway(config), start_gateway(config)
    _ask(first, KEY_B)  # under the budget when it starts: it finishes, and its cost is counted
    with pytest.raises(openai.RateLimitError) as refused:  # it cost more than the whole budget: none follows
        _ask(second, KEY_B)
    refusal = refused.value
    assert isinstance(refusal.body, dict)
    assert refusal.body["code"] == "insufficient_quota"
    assert "tenant globex" in refusal.body["message"]
    with pytest.raises(openai.RateLimitError) as again:
        _ask(first, KEY_B)  # and on the other gateway
    assert isinstance(again.value.body, dict)
    assert again.value.body["code"] == "insufficient_quota"


@pytest.mark.parametrize(("mode", "served"), [("open", True), ("closed", False)])
def test_an_unreachable_redis_fails_as_configured(
    vllm: Any, assets: Path, start_gateway: Any, mode: str, served: bool
) -> None:
    nowhere = f"redis://127.0.0.1:{localstack.free_port()}/0"
    gateway = start_gateway(_config(vllm.url, assets, nowhere, on_store_error=mode))
    if served:
        assert _ask(gateway, KEY_A).choices
    else:
        with pytest.raises(openai.InternalServerError) as refused:
            _ask(gateway, KEY_A)
        assert refused.value.status_code == 503
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "quota_store_unavailable"
