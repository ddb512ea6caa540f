"""Policies end to end: real vLLM adapters, the real embedding model, the gateway as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.stack import BASE, gateway_config, turnout_info
from tests.support.waiting import until

GHOST = "ghost"


def policy_config(vllm_url: str, assets: Path, ghost_dir: Path) -> dict[str, Any]:
    config = gateway_config(vllm_url, assets)
    config["adapters"][GHOST] = {"path": str(ghost_dir)}  # declared, but its files are gone
    config["intents"] = {
        "formal-writing": {
            "threshold": 0.45,
            "examples": ["Please draft a formal letter to our customer", "Compose a polite business email"],
        },
        "order-status": {
            "threshold": 0.45,
            "examples": ["Where is my package?", "When will my order arrive?", "Track my delivery"],
        },
    }
    config["policies"] = {
        "support-bot": {
            "description": "support desk",
            "rules": [
                {
                    "name": "realtime",
                    "when": {"header": {"name": "x-latency-class", "equals": "realtime"}},
                    "target": "adapter:terse",
                },
                {
                    "name": "broken-first",
                    "when": {"metadata": {"key": "probe", "equals": "fallback"}},
                    "target": f"adapter:{GHOST}",
                    "fallbacks": ["adapter:pirate"],
                },
                {"name": "formal", "when": {"intent": "formal-writing"}, "target": "adapter:formal"},
                {"name": "orders", "when": {"intent": "order-status"}, "target": "adapter:pirate"},
                {
                    "name": "unsure",
                    "when": {"intent": "abstain"},
                    "target": {"base": True, "system_prompt": "Answer briefly.", "caps": {"max_tokens": 5}},
                },
            ],
            "default": "adapter:terse",
            "fallbacks": ["base"],
        }
    }
    return config


@pytest.fixture(scope="module")
def policy_gateway(vllm: Any, assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("policies")
    process = GatewayProcess(policy_config(vllm.url, assets, workdir / "gone"), workdir, localstack.free_port())
    with process:
        yield process


@pytest.fixture(scope="module")
def client(policy_gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=policy_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _messages(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def _served(client: openai.OpenAI, text: str, **extra: Any) -> tuple[dict[str, str], Any]:
    raw = client.chat.completions.with_raw_response.create(
        model="support-bot", messages=_messages(text), **{"max_tokens": 8, "temperature": 0, **extra}
    )
    return dict(raw.headers), raw.parse()


def _direct(client: openai.OpenAI, model: str, text: str) -> str | None:
    response = client.chat.completions.create(model=model, messages=_messages(text), max_tokens=8, temperature=0)
    return response.choices[0].message.content


def test_policy_names_are_listed_as_models(client: openai.OpenAI) -> None:
    models = {m.id: turnout_info(m) for m in client.models.list()}
    assert models["support-bot"]["kind"] == "policy"
    assert models["support-bot"]["rules"] == ["realtime", "broken-first", "formal", "orders", "unsure"]
    assert models["support-bot"]["default"] == "adapter:terse"


def test_header_rule_reaches_its_adapter(client: openai.OpenAI) -> None:
    text = "Where is my package?"  # would be 'orders' by intent, but the header rule comes first
    headers, response = _served(client, text, extra_headers={"x-latency-class": "realtime"})
    assert headers["x-turnout-route"] == "adapter:terse"
    assert headers["x-turnout-rule"] == "realtime"
    assert headers["x-turnout-policy"] == "support-bot"
    # The same answer as asking the adapter by name: the request really reached it, unchanged.
    assert response.choices[0].message.content == _direct(client, "terse", text)


@pytest.mark.parametrize(
    ("text", "rule", "route", "model"),
    [
        ("Could you write a formal letter to a customer about the delay?", "formal", "adapter:formal", "formal"),
        ("How long until my parcel gets here?", "orders", "adapter:pirate", "pirate"),
    ],
)
def test_semantic_rules_reach_their_adapters(
    client: openai.OpenAI, text: str, rule: str, route: str, model: str
) -> None:
    headers, response = _served(client, text)
    assert (headers["x-turnout-rule"], headers["x-turnout-route"]) == (rule, route)
    assert response.choices[0].message.content == _direct(client, model, text)


def test_abstain_goes_to_the_base_model_with_prompt_and_caps(client: openai.OpenAI) -> None:
    headers, response = _served(client, "Banana bread needs ripe bananas and patience.", max_tokens=100)
    assert headers["x-turnout-rule"] == "unsure"
    assert headers["x-turnout-route"] == f"base:{BASE}"
    assert response.usage.completion_tokens == 5  # the target's cap, not the client's 100


def test_fallback_chain_rescues_a_request_whose_target_cannot_serve(client: openai.OpenAI) -> None:
    headers, response = _served(client, "hello", metadata={"probe": "fallback"})
    assert headers["x-turnout-route"] == "adapter:pirate"
    assert headers["x-turnout-fallback-from"] == f"adapter:{GHOST}"
    assert headers["x-turnout-rule"] == "broken-first"
    assert response.choices[0].message.content == _direct(client, "pirate", "hello")


def test_streams_follow_the_policy_too(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="support-bot",
        messages=_messages("hi"),
        max_tokens=4,
        stream=True,
        extra_headers={"x-latency-class": "realtime"},
    )
    assert raw.headers["x-turnout-route"] == "adapter:terse"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)


@pytest.mark.parametrize(
    ("text", "headers"),
    [
        ("Where is my package?", {"x-latency-class": "realtime"}),
        ("Could you write a formal letter to a customer about the delay?", {}),
        ("Banana bread needs ripe bananas and patience.", {}),
    ],
)
def test_explain_agrees_with_what_is_served(
    client: openai.OpenAI, policy_gateway: GatewayProcess, text: str, headers: dict[str, str]
) -> None:
    body = {"model": "support-bot", "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    explained = httpx.post(policy_gateway.url + "/v1/route/explain", json=body, headers=headers, timeout=60).json()
    served, _ = _served(client, text, extra_headers=headers)
    assert explained["decision"]["target"]["label"] == served["x-turnout-route"]
    assert explained["decision"]["rule"] == served["x-turnout-rule"]
    assert [r["rule"] for r in explained["rules"]] == ["realtime", "broken-first", "formal", "orders", "unsure"]
    if "intent" in explained:
        assert set(explained["intent"]["scores"]) == {"formal-writing", "order-status"}


def test_cli_explains_offline_like_the_endpoint(policy_gateway: GatewayProcess, tmp_path: Path) -> None:
    body = {"model": "support-bot", "messages": [{"role": "user", "content": "When will my order arrive?"}]}
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(body))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "route",
            "explain",
            "--config",
            str(policy_gateway.config_path),
            str(request_file),
            "--header",
            "x-latency-class: batch",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    offline = json.loads(result.stdout)
    online = httpx.post(policy_gateway.url + "/v1/route/explain", json=body, timeout=60).json()
    assert offline["decision"] == online["decision"]
    assert offline["decision"]["rule"] == "orders"


def test_explain_errors_use_the_envelope(policy_gateway: GatewayProcess) -> None:
    response = httpx.post(
        policy_gateway.url + "/v1/route/explain", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    response = httpx.post(policy_gateway.url + "/v1/route/explain", content=b"{")
    assert response.status_code == 400


def _rule_for(gateway: GatewayProcess, text: str) -> str:
    body = {"model": "support-bot", "messages": [{"role": "user", "content": text}]}
    response = httpx.post(gateway.url + "/v1/route/explain", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["decision"]["rule"])


def test_reload_keeps_serving_on_a_broken_file_and_applies_a_good_one(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    config = policy_config(vllm.url, assets, tmp_path / "gone")
    gateway: GatewayProcess = start_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert _rule_for(gateway, "Where is my package?") == "orders"

    for broken, problem in [
        (yaml.safe_dump(config) + "\npolicies_typo: 1\n", "policies_typo: unknown key"),
        (
            yaml.safe_dump({**config, "intents": {"formal-writing": config["intents"]["formal-writing"]}}),
            "policies.support-bot.rules[3].when: intent 'order-status' is not defined under intents",
        ),
    ]:
        gateway.config_path.write_text(broken)
        response = httpx.post(gateway.url + "/admin/reload", timeout=60)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_config"
        assert f"{gateway.config_path}: {problem}" in error["message"]
    # the old policy keeps serving
    assert _rule_for(gateway, "Where is my package?") == "orders"
    assert client.chat.completions.create(model="support-bot", messages=_messages("hi"), max_tokens=2).choices

    config["policies"]["support-bot"]["rules"].insert(0, {"name": "everything-formal", "target": "adapter:formal"})
    gateway.config_path.write_text(yaml.safe_dump(config))
    response = httpx.post(gateway.url + "/admin/reload", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "reloaded"
    assert _rule_for(gateway, "Where is my package?") == "everything-formal"

    # SIGHUP does the same: a broken file is refused, a good one applied.
    assert gateway.process is not None
    gateway.config_path.write_text("vllm: [broken\n")
    os.kill(gateway.process.pid, signal.SIGHUP)
    until(
        lambda: "SIGHUP reload refused" in gateway.log_path.read_text(),
        lambda: httpx.get(gateway.url + "/health"),  # paces the polling on a real round trip
        gateway.log_tail,
    )
    assert _rule_for(gateway, "Where is my package?") == "everything-formal"
    config["policies"]["support-bot"]["rules"].pop(0)
    gateway.config_path.write_text(yaml.safe_dump(config))
    os.kill(gateway.process.pid, signal.SIGHUP)
    until(lambda: _rule_for(gateway, "Where is my package?") == "orders", lambda: None, gateway.log_tail)
