"""Quotas per key and per tenant against real vLLM, enforced by two gateways sharing one real Redis
(redis-server, Debian's package): requests per minute and a dollar budget hold across both, refused with
429, retry-after and the envelope naming the limit; an unreachable Redis fails open or closed as configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localstack
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

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


def test_a_tenants_dollar_budget_stops_spending_on_every_gateway(
    vllm: Any, assets: Path, redis: RedisServer, start_gateway: Any
) -> None:
    config = _config(vllm.url, assets, redis.url, "globex", tenants={"globex": {"usd_per_day": 0.0000001}})
    first, second = start_gateway(config), start_gateway(config)
    _ask(first, KEY_B)  # under the budget when it starts: it finishes, and its cost is counted
    refusal = None
    for _ in range(20):  # the count is written as the first request ends: a few more may start before it lands
        try:
            _ask(second, KEY_B)
        except openai.RateLimitError as exc:
            refusal = exc
            break
    assert refusal is not None, "the budget never stopped the requests"
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
