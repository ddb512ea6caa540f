"""The OpenAI fine-tune route through litellm, against a real OpenAI-compatible server on loopback
(the test vLLM serves the tiny model under a fine-tune's name), and fallbacks across target kinds."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from gateway.config import ConfigError, load_config
from tests.support.gateway import GatewayProcess
from tests.support.recorder import RecordingProxy
from tests.support.stack import FINE_TUNE, gateway_config

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]


def _config(vllm_url: str, assets: Path, api_base: str, tmp_path: Path) -> dict[str, Any]:
    config = gateway_config(vllm_url, assets)
    config["adapters"]["ghost"] = {"path": str(tmp_path / "gone")}
    config["openai"] = {"api_base": api_base, "api_key": "sk-loopback"}
    config["policies"] = {
        "hosted": {"default": f"openai:{FINE_TUNE}"},
        "rescued": {"default": f"openai:{FINE_TUNE}", "fallbacks": ["adapter:terse"]},
        "last-resort": {"default": "adapter:ghost", "fallbacks": [f"openai:{FINE_TUNE}"]},
    }
    return config


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_fine_tune_answers_through_litellm_streaming_and_not(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    gateway = start_gateway(_config(vllm.url, assets, vllm.url + "/v1", tmp_path))
    client = _client(gateway)
    raw = client.chat.completions.with_raw_response.create(model="hosted", messages=PROMPT, max_tokens=6, temperature=0)
    assert raw.headers["x-turnout-route"] == f"openai:{FINE_TUNE}"
    answer = raw.parse()
    direct = openai.OpenAI(base_url=vllm.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model=FINE_TUNE, messages=PROMPT, max_tokens=6, temperature=0
    )
    assert answer.choices[0].message.content == direct.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6

    chunks = list(
        client.chat.completions.create(
            model="hosted",
            messages=PROMPT,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.choices[0].message.content
    assert any(c.usage is not None and c.usage.completion_tokens == 6 for c in chunks)


def _litellm_prices(model: str) -> tuple[float, float]:
    """Input and output dollars per token for ``model`` from the price file litellm ships, read here."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    entry = json.loads(path.read_text())[model]
    return float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"])


def test_fine_tune_requests_are_costed_at_their_price(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    """A fine-tune costs what litellm's map says for ``ft:<base>``, streaming or not; an override wins."""
    config = _config(vllm.url, assets, vllm.url + "/v1", tmp_path)
    gateway = start_gateway(config)
    client = _client(gateway)
    input_price, output_price = _litellm_prices("ft:gpt-4o-mini-2024-07-18")
    raw = client.chat.completions.with_raw_response.create(model="hosted", messages=PROMPT, max_tokens=6)
    usage = raw.parse().usage
    assert usage is not None
    expected = usage.prompt_tokens * input_price + usage.completion_tokens * output_price
    assert math.isclose(float(raw.headers["x-turnout-cost-usd"]), expected, rel_tol=1e-6)

    chunks = list(client.chat.completions.create(model="hosted", messages=PROMPT, max_tokens=6, stream=True))
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    closing = (chunks[-1].model_extra or {})["turnout"]
    assert closing["estimated"] is False
    assert math.isclose(closing["cost_usd"], usage.prompt_tokens * input_price + 6 * output_price, rel_tol=1e-6)

    config["costs"]["openai"] = {"models": {FINE_TUNE: {"input": 1.0, "output": 2.0}}}  # per million tokens
    priced = _client(start_gateway(config)).chat.completions.with_raw_response.create(
        model="hosted", messages=PROMPT, max_tokens=6
    )
    overridden = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
    assert math.isclose(float(priced.headers["x-turnout-cost-usd"]), overridden, rel_tol=1e-6)


def test_an_openai_model_without_a_price_is_a_config_error(tmp_path: Path, assets: Path) -> None:
    config = gateway_config("http://127.0.0.1:9", assets)
    config["policies"] = {"mystery": {"default": "openai:ft:no-such-base:acme::x1"}}
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(
        "policies.mystery.default" in p and "costs.openai.models" in p and str(path) in p for p in caught.value.problems
    )


def test_a_fallback_rescues_a_request_whose_first_target_is_down(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    down = f"http://127.0.0.1:{localstack.free_port()}/v1"
    gateway = start_gateway(_config(vllm.url, assets, down, tmp_path))
    raw = _client(gateway).chat.completions.with_raw_response.create(model="rescued", messages=PROMPT, max_tokens=4)
    assert raw.headers["x-turnout-route"] == "adapter:terse"
    assert raw.headers["x-turnout-fallback-from"] == f"openai:{FINE_TUNE}"
    assert raw.parse().choices[0].message.content
    # without a fallback, the same failure is a clear 503
    with pytest.raises(openai.APIStatusError) as caught:
        _client(gateway).chat.completions.create(model="hosted", messages=PROMPT, max_tokens=4)
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_unavailable"


def test_a_failing_openai_model_opens_its_circuit_and_its_fallback_answers_at_once(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    """OpenAI answers 500 (a proxy in front of nothing): after two failures the circuit opens, and the next
    requests go to the fallback without reaching OpenAI at all; /admin/circuits and the metrics say so."""
    failing = RecordingProxy(f"http://127.0.0.1:{localstack.free_port()}")
    failing.start()
    try:
        config = _config(vllm.url, assets, failing.url + "/v1", tmp_path)
        config["breaker"] = {"failures": 2, "open_s": 600}
        gateway = start_gateway(config)
        client = _client(gateway)
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(model="rescued", messages=PROMPT, max_tokens=4)
            assert raw.headers["x-turnout-route"] == "adapter:terse"
        sent = [call for call in failing.calls if call.method == "POST"]
        assert len(sent) == 2  # the third to fifth requests never reached the failing upstream
        circuits = httpx.get(gateway.url + "/admin/circuits").json()
        assert [(c["upstream"], c["state"]) for c in circuits["openai"]] == [(f"openai:{FINE_TUNE}", "open")]
        assert circuits["vllm"]["state"] == "closed"
        with pytest.raises(openai.APIStatusError) as caught:  # no fallback: refused at once, and why
            client.chat.completions.create(model="hosted", messages=PROMPT, max_tokens=4)
        assert caught.value.status_code == 503
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "circuit_open"
        metrics = httpx.get(gateway.url + "/metrics").text
        assert f'turnout_circuit_state{{upstream="openai:{FINE_TUNE}"}} 2.0' in metrics
        assert f'turnout_circuit_opened_total{{upstream="openai:{FINE_TUNE}"}} 1.0' in metrics
    finally:
        failing.stop()


def test_the_fine_tune_is_the_fallback_of_last_resort(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    gateway = start_gateway(_config(vllm.url, assets, vllm.url + "/v1", tmp_path))
    raw = _client(gateway).chat.completions.with_raw_response.create(model="last-resort", messages=PROMPT, max_tokens=4)
    assert raw.headers["x-turnout-route"] == f"openai:{FINE_TUNE}"
    assert raw.headers["x-turnout-fallback-from"] == "adapter:ghost"
    assert raw.parse().choices[0].message.content
