"""The OpenAI fine-tune route through litellm, against a real OpenAI-compatible server on loopback
(the test vLLM serves the tiny model under a fine-tune's name), and fallbacks across target kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import localstack
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
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


def test_the_fine_tune_is_the_fallback_of_last_resort(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    gateway = start_gateway(_config(vllm.url, assets, vllm.url + "/v1", tmp_path))
    raw = _client(gateway).chat.completions.with_raw_response.create(model="last-resort", messages=PROMPT, max_tokens=4)
    assert raw.headers["x-turnout-route"] == f"openai:{FINE_TUNE}"
    assert raw.headers["x-turnout-fallback-from"] == "adapter:ghost"
    assert raw.parse().choices[0].message.content
