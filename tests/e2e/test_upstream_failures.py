"""When vLLM is down, slow or restarted, clients get clear envelopes, and forgotten adapters heal."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.stack import BASE, FINE_TUNE, gateway_config
from tests.support.vllm_api import loaded_adapters

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
ROOT = Path(__file__).resolve().parents[2]


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


def test_vllms_circuit_opens_falls_back_and_closes_when_it_returns(
    vllm: Any, assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    """The real vLLM stopped: the first request finds it down and falls back to the OpenAI route (a fast
    OpenAI-compatible server on loopback); the next ones skip vLLM at once (its circuit is open) and fall
    back too; vLLM started again is tried again (a probe or the half-open trial) and serves again."""
    port = localstack.free_port()
    hosted = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/overhead/upstream.py"), "--port", str(port), "--model", FINE_TUNE],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        config = gateway_config(vllm.url, assets, health={"eject_after": 1, "interval_s": 1.0})
        config["openai"] = {"api_base": f"http://127.0.0.1:{port}/v1", "api_key": "sk-loopback"}
        config["breaker"] = {"open_s": 2.0}
        config["policies"] = {"rescued": {"default": "base", "fallbacks": [f"openai:{FINE_TUNE}"]}}
        gateway = start_gateway(config)
        client = _client(gateway)
        assert _route(client) == f"base:{BASE}"

        vllm.stop()
        routes = [_route(client) for _ in range(3)]
        assert routes == [f"openai:{FINE_TUNE}"] * 3  # every one answered, by the fallback
        circuit = httpx.get(gateway.url + "/admin/circuits").json()["vllm"]
        assert circuit["state"] == "open"

        vllm.start()
        vllm.wait_ready(timeout=600)
        deadline = time.monotonic() + 120
        while httpx.get(gateway.url + "/admin/circuits").json()["vllm"]["state"] != "closed":
            assert time.monotonic() < deadline, "vLLM never came back into rotation"
            _route(client)  # a request may be the half-open trial; probes run meanwhile
            time.sleep(0.5)  # polling for the probe, not a timing assertion
        assert _route(client) == f"base:{BASE}"
    finally:
        hosted.terminate()
        hosted.wait(10)
        if not vllm.is_running():
            vllm.start()
            vllm.wait_ready(timeout=600)


def _route(client: openai.OpenAI) -> str:
    raw = client.chat.completions.with_raw_response.create(model="rescued", messages=PROMPT, max_tokens=2)
    return str(raw.headers["x-turnout-route"])
