"""When vLLM is down, slow or restarted, clients get clear envelopes, and forgotten adapters heal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.stack import BASE, gateway_config
from tests.support.vllm_api import loaded_adapters

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_upstream_down_gives_503_and_not_ready(assets: Path, start_gateway: Any) -> None:
    nobody = f"http://127.0.0.1:{localstack.free_port()}"
    gateway = start_gateway(gateway_config(nobody, assets))
    with pytest.raises(openai.InternalServerError) as caught:
        _client(gateway).chat.completions.create(model=BASE, messages=PROMPT, max_tokens=2)
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_unavailable"
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["type"] == "upstream_unavailable"
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_upstream_timeout_gives_504(vllm: Any, assets: Path, start_gateway: Any) -> None:
    gateway = start_gateway(gateway_config(vllm.url, assets, read_timeout_s=0.05))
    with pytest.raises(openai.APIStatusError) as caught:
        _client(gateway).chat.completions.create(
            model=BASE, messages=PROMPT, max_tokens=300, extra_body={"ignore_eos": True}
        )
    assert caught.value.status_code == 504
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_timeout"


def test_vllm_restart_is_healed_transparently(vllm: Any, gateway: GatewayProcess) -> None:
    client = _client(gateway)
    first = client.chat.completions.create(model="pirate", messages=PROMPT, max_tokens=6, temperature=0)
    assert "pirate" in loaded_adapters(vllm.url)

    vllm.restart()
    vllm.wait_ready(timeout=600)
    assert "pirate" not in loaded_adapters(vllm.url)  # a restarted vLLM forgets runtime-loaded adapters

    again = client.chat.completions.create(model="pirate", messages=PROMPT, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert "pirate" in loaded_adapters(vllm.url)
    assert client.chat.completions.create(model=BASE, messages=PROMPT, max_tokens=2).choices


def test_with_every_replica_ejected_requests_fail_at_once_but_one(assets: Path, start_gateway: Any) -> None:
    """vLLM down: the requests that find it ejected are refused at once (circuit_open), not each sent to
    wait on the same failure; one request per breaker.open_s tries it again."""
    nobody = f"http://127.0.0.1:{localstack.free_port()}"
    config = gateway_config(nobody, assets)
    config["vllm"]["health"] = {"eject_after": 1}
    config["breaker"] = {"open_s": 600}
    gateway = start_gateway(config)
    codes = []
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            _client(gateway).chat.completions.create(model=BASE, messages=PROMPT, max_tokens=2)
        assert isinstance(caught.value.body, dict)
        codes.append(caught.value.body["code"])
    assert codes[-1] == "circuit_open"
    assert codes.count("upstream_unavailable") <= 1  # the one trial (none when probes ejected it first)
    circuit = httpx.get(gateway.url + "/admin/circuits").json()["vllm"]
    assert circuit["state"] == "open"
    assert circuit["replicas_in_rotation"] == 0
    assert 0 < circuit["next_trial_in_s"] <= 600
