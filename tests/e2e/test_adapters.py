"""Adapter lifecycle on real vLLM: lazy load, single-flight, LRU eviction, validation, capacity, CLI.

The gateway here talks to vLLM through a recording proxy, so the tests see every load and unload
call it makes, while the adapters are really loaded into the real server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.recorder import RecordingProxy
from tests.support.stack import gateway_config, turnout_info
from tests.support.vllm_api import loaded_adapters, unload_all

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write one line about lighthouses."}]


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, model: str, max_tokens: int = 4) -> str:
    response = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0)
    return response.choices[0].message.content or ""


@pytest.fixture
def clean(vllm: Any, proxy: RecordingProxy) -> RecordingProxy:
    """No adapter loaded on vLLM and no call recorded: each test starts from a known state."""
    unload_all(vllm.url)
    proxy.clear()
    return proxy


@pytest.fixture
def broken_adapters(assets: Path, tmp_path: Path) -> dict[str, Path]:
    """Adapters that must never reach vLLM, each wrong in one way."""

    def variant(name: str, **changes: Any) -> Path:
        target = tmp_path / name
        shutil.copytree(assets / "adapters" / "formal", target)
        config = json.loads((target / "adapter_config.json").read_text())
        config.update(changes)
        (target / "adapter_config.json").write_text(json.dumps(config))
        return target

    no_config = tmp_path / "no-config"
    shutil.copytree(assets / "adapters" / "formal", no_config)
    (no_config / "adapter_config.json").unlink()
    return {
        "wide": assets / "adapters" / "wide",
        "ia3": variant("ia3", peft_type="IA3"),
        "alien": variant("alien", base_model_name_or_path="someone/other-model-7b"),
        "no-config": no_config,
        "ghost": tmp_path / "does-not-exist",
    }


def test_first_request_loads_adapter_once_and_vllm_lists_it(
    clean: RecordingProxy, vllm: Any, assets: Path, start_gateway: Any
) -> None:
    gateway = start_gateway(gateway_config(clean.url, assets))
    client = _client(gateway)
    assert "formal" not in loaded_adapters(vllm.url)
    models = {m.id: turnout_info(m) for m in client.models.list()}
    assert models["formal"]["resident"] is False

    assert _ask(client, "formal")
    assert "formal" in loaded_adapters(vllm.url)
    assert len(clean.loads("formal")) == 1
    assert clean.loads("formal")[0].body == {"lora_name": "formal", "lora_path": str(assets / "adapters" / "formal")}
    assert _ask(client, "formal")
    assert len(clean.loads("formal")) == 1, "a resident adapter must not be loaded again"
    models = {m.id: turnout_info(m) for m in client.models.list()}
    assert models["formal"]["resident"] is True


def test_concurrent_first_requests_share_one_load(clean: RecordingProxy, assets: Path, start_gateway: Any) -> None:
    gateway = start_gateway(gateway_config(clean.url, assets))
    client = _client(gateway)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _ask(client, "terse"), range(8)))
    assert all(answers)
    assert len(clean.loads("terse")) == 1


def test_least_recently_used_idle_adapter_is_evicted_at_capacity(
    clean: RecordingProxy, vllm: Any, assets: Path, start_gateway: Any
) -> None:
    gateway = start_gateway(gateway_config(clean.url, assets, max_resident=2))
    client = _client(gateway)
    _ask(client, "formal")
    _ask(client, "terse")
    _ask(client, "formal")  # formal is now the most recently used
    assert clean.unloads() == []
    _ask(client, "pirate")
    assert [c.body["lora_name"] for c in clean.unloads()] == ["terse"]
    assert loaded_adapters(vllm.url) == {"formal", "pirate"}
    _ask(client, "terse")
    assert [c.body["lora_name"] for c in clean.unloads()] == ["terse", "formal"]
    assert loaded_adapters(vllm.url) == {"pirate", "terse"}
    resident = {m.id for m in client.models.list() if turnout_info(m).get("resident")}
    assert resident == {"pirate", "terse"}


def test_invalid_adapters_get_clear_400_and_never_reach_vllm(
    clean: RecordingProxy, assets: Path, start_gateway: Any, broken_adapters: dict[str, Path]
) -> None:
    config = gateway_config(clean.url, assets, adapters=())
    config["adapters"] = {name: {"path": str(path)} for name, path in broken_adapters.items()}
    client = _client(start_gateway(config))
    expected = {
        "wide": "rank 16 exceeds the server's max LoRA rank 8",
        "ia3": "only LORA adapters can be served",
        "alien": "someone/other-model-7b",
        "no-config": "adapter_config.json is missing",
        "ghost": "is not a directory",
    }
    for name, needle in expected.items():
        with pytest.raises(openai.BadRequestError) as caught:
            _ask(client, name)
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["code"] == "invalid_adapter"
        assert needle in body["message"], body["message"]
        assert name in body["message"]
    assert clean.loads() == []


def test_every_slot_busy_gives_503_then_frees(clean: RecordingProxy, assets: Path, start_gateway: Any) -> None:
    gateway = start_gateway(gateway_config(clean.url, assets, max_resident=1, capacity_wait_s=0))
    client = _client(gateway)
    stream = client.chat.completions.create(
        model="formal", messages=PROMPT, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))  # formal is now busy for the rest of this long stream
    with pytest.raises(openai.InternalServerError) as caught:
        _ask(client, "terse")
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "adapter_capacity_exhausted"
    stream.close()
    assert _ask(client, "terse")  # formal is idle now, so it is evicted for terse


def test_adapters_list_and_config_check_cli(
    clean: RecordingProxy,
    vllm: Any,
    assets: Path,
    tmp_path: Path,
    start_gateway: Any,
    broken_adapters: dict[str, Path],
) -> None:
    config = gateway_config(vllm.url, assets)
    config["adapters"]["wide"] = {"path": str(broken_adapters["wide"])}
    gateway = start_gateway(config)
    _ask(_client(gateway), "pirate")

    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "adapters", "list", "--config", str(gateway.config_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 1  # an invalid adapter fails the listing, and it says which
    assert "adapter(s) invalid: wide" in listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["adapters"]}
    assert rows["pirate"]["resident"] is True
    assert rows["formal"]["resident"] is False
    assert rows["wide"]["problem"]
    assert not rows["pirate"]["problem"]

    table = subprocess.run(
        [sys.executable, "-m", "gateway", "adapters", "list", "--config", str(gateway.config_path)],
        capture_output=True,
        text=True,
    )
    assert table.returncode == 1
    assert any(line.split()[:3] == ["pirate", "yes", "yes"] for line in table.stdout.splitlines())

    check = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(gateway.config_path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1
    assert "rank 16 exceeds" in check.stderr
    del config["adapters"]["wide"]
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(config))
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(good)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "OK" in check.stdout
