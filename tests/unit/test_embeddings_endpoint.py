"""``POST /v1/embeddings`` in-process, with the real packaged embedding model and the official ``openai`` client.

The gateway is driven over HTTP only. What it answers is compared with what the gateway's embedder gives
retrieval for the same text (the same class, loaded here), with the model's own tokenizer (loaded with
``transformers``, not the gateway's counting path), and with the scores retrieval itself reports when a
policy answers from a collection (the gateway's own Qdrant store).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from gateway.config.model import PACKAGED_EMBEDDER, EmbeddingsConfig
from gateway.embeddings import Embedder, model_location
from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import Gateway, assert_envelope, gateway_config, serve_gateway

NAME = PACKAGED_EMBEDDER  # the name the gateway serves its packaged model under unless told another
PATH = "/v1/embeddings"
KEY, ADMIN = "sk-embed-acme", "sk-embed-admin"
PRICE = 20.0  # costs.rag.embedding_usd_per_1m_tokens
MAX_INPUTS, MAX_REQUEST_TOKENS = 16, 400
LABELS = {"endpoint": "embeddings", "policy": NAME, "route_kind": "embedding", "target": f"embedding:{NAME}"}
REFUSED = {"endpoint": "embeddings", "policy": "none", "route_kind": "none", "target": "none"}

QUESTION = "When does the harbour office open on weekdays?"
PARAPHRASE = "What are the weekday opening hours of the harbour office?"
UNRELATED = "Penguins huddle together to survive the Antarctic winter."
DOCUMENT = "The Acme harbour office on Pier 4 opens at 7:30 and closes at 16:00 on weekdays."


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def reference() -> AsyncIterator[Embedder]:
    """The gateway's embedder class with its default configuration: what retrieval embeds a question with."""
    embedder = Embedder(EmbeddingsConfig())
    await embedder.start()
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The model's own tokenizer, as ``transformers`` loads it from the model's directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_location(PACKAGED_EMBEDDER)))


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """API keys, a price, small limits, and a collection that a policy answers from: the embedding model is
    loaded for retrieval, so the endpoint is served without being asked for."""
    workdir = tmp_path_factory.mktemp("embeddings")
    config = gateway_config(
        upstream.url,
        workdir,
        auth={"keys": [{"key": KEY, "tenant": "acme"}, {"key": ADMIN, "admin": True}]},
        costs={"rag": {"embedding_usd_per_1m_tokens": PRICE}},
        embeddings={"max_inputs": MAX_INPUTS, "max_request_tokens": MAX_REQUEST_TOKENS, "batch_size": 4},
        rag={"store": {"path": str(workdir / "qdrant")}, "collections": {"kb": {"top_k": 1, "score_threshold": 0}}},
        policies={"kb-bot": {"default": "rag:kb"}},
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(scope="module")
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with gateway.client(api_key=KEY) as opened:
        yield opened


AUTH = {"authorization": f"Bearer {KEY}"}


async def post(gateway: Gateway, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await gateway.http.post(
        PATH, content=content, headers={"content-type": "application/json", **(AUTH if headers is None else headers)}
    )


def vectors(answer: Any) -> np.ndarray[Any, Any]:
    """The answer's vectors (an ``openai`` response or a decoded JSON body), in input order, as float32."""
    data = answer["data"] if isinstance(answer, dict) else [d.model_dump() for d in answer.data]
    assert [d["index"] for d in data] == list(range(len(data)))
    rows = [
        np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else e for e in (d["embedding"] for d in data)
    ]
    return np.asarray(rows, dtype=np.float32)


async def retrieval_vectors(reference: Embedder, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    return np.asarray([await reference.embed_query(t) for t in texts], dtype=np.float32)


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- answers ----------------------------------------------------------------------------------------------


async def test_the_openai_client_gets_base64_by_default_and_float_on_request_both_equal_to_retrieval(
    client: openai.AsyncOpenAI, gateway: Gateway, reference: Embedder
) -> None:
    """The official client asks for base64 unless told otherwise and decodes it; both encodings carry the
    same float32 values, and a lone text's vector is exactly the one retrieval computes."""
    by_default = await client.embeddings.create(model=NAME, input=QUESTION)
    as_float = await client.embeddings.create(model=NAME, input=QUESTION, encoding_format="float")
    raw_base64 = (await post(gateway, {"model": NAME, "input": QUESTION, "encoding_format": "base64"})).json()
    assert isinstance(raw_base64["data"][0]["embedding"], str)
    expected = await retrieval_vectors(reference, [QUESTION])
    for answer in (by_default, as_float, raw_base64):
        found = vectors(answer)
        assert found.shape == (1, 384)
        assert np.array_equal(found, expected)
    assert by_default.model == NAME
    assert by_default.object == "list"
    assert by_default.data[0].object == "embedding"
    assert np.linalg.norm(expected[0]) == pytest.approx(1.0, abs=1e-5)  # normalised, as retrieval stores them


async def test_a_batch_keeps_its_order_and_matches_each_text_embedded_alone(
    client: openai.AsyncOpenAI, reference: Embedder
) -> None:
    """Texts of very different lengths (the service batches them by length) come back in input order."""
    texts = [
        "Kettles.",
        DOCUMENT + " " + DOCUMENT,
        "Returns are accepted within thirty days of delivery with the receipt.",
        UNRELATED,
        "Why?",
        "Shipping to the islands takes five to eight working days, weather permitting, by ferry.",
        QUESTION,
    ]
    base64_answer = await client.embeddings.create(model=NAME, input=texts)
    float_answer = await client.embeddings.create(model=NAME, input=texts, encoding_format="float")
    found = vectors(base64_answer)
    assert np.array_equal(found, vectors(float_answer))
    alone = await retrieval_vectors(reference, texts)
    # In a batch, shorter texts are padded; the model masks the padding, so only float rounding differs.
    np.testing.assert_allclose(found, alone, atol=1e-5)
    for i in range(len(texts)):
        nearest = int(np.argmax(alone @ found[i]))
        assert nearest == i


async def test_usage_is_the_model_tokenizers_count(client: openai.AsyncOpenAI, tokenizer: Any) -> None:
    texts = [QUESTION, "Kettles.", DOCUMENT, "naïve café — ünïcödé, emoji 🫖 and numbers 12345.678"]
    answer = await client.embeddings.create(model=NAME, input=texts)
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts)  # special tokens included: the model reads them
    assert answer.usage.prompt_tokens == expected
    assert answer.usage.total_tokens == expected


async def test_a_paraphrase_is_closer_than_an_unrelated_sentence(client: openai.AsyncOpenAI) -> None:
    question, paraphrase, unrelated = vectors(
        await client.embeddings.create(model=NAME, input=[QUESTION, PARAPHRASE, UNRELATED])
    )
    assert cosine(question, paraphrase) > 0.7
    assert cosine(question, unrelated) < 0.2
    assert cosine(question, paraphrase) > cosine(question, unrelated) + 0.5


async def test_scores_retrieval_reports_are_the_cosines_of_these_vectors(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    """A document ingested into the gateway's own store, then asked about through a policy: the citation's
    score is the cosine of the endpoint's vectors of the question and of the document."""
    ingested = await gateway.http.post(
        "/v1/rag/collections/kb/documents",
        json={"documents": [{"id": "harbour", "title": "Harbour", "text": DOCUMENT}], "tenant": "acme"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert ingested.status_code == 200, ingested.text
    assert ingested.json()["added"] == ["harbour"]
    question, document = vectors(await client.embeddings.create(model=NAME, input=[PARAPHRASE, DOCUMENT]))
    raw = await client.chat.completions.with_raw_response.create(
        model="kb-bot", messages=[{"role": "user", "content": PARAPHRASE}], max_tokens=4
    )
    [citation] = (raw.parse().choices[0].message.model_extra or {})["citations"]
    assert citation["document"] == "harbour"
    assert citation["snippet"] == DOCUMENT  # one chunk: the whole document
    assert citation["score"] == pytest.approx(cosine(question, document), abs=5e-5)  # the citation rounds to 4 places
    # The retrieval's query embedding is priced as the endpoint prices the same text (self-hosted generation
    # and searches cost nothing here): by its tokens, not by the 128 its tokenizer file pads every text to.
    alone = await client.embeddings.with_raw_response.create(model=NAME, input=PARAPHRASE)
    assert alone.parse().usage.prompt_tokens < 128
    assert float(raw.headers["x-turnout-cost-usd"]) == float(alone.headers["x-turnout-cost-usd"])
    assert float(alone.headers["x-turnout-cost-usd"]) == pytest.approx(alone.parse().usage.prompt_tokens * PRICE / 1e6)


async def test_dimensions_equal_to_the_models_and_user_are_accepted(client: openai.AsyncOpenAI) -> None:
    answer = await client.embeddings.create(model=NAME, input="Kettles.", dimensions=384, user="user-42")
    assert vectors(answer).shape == (1, 384)


# -- cost, metrics, cache ----------------------------------------------------------------------------------


async def test_the_cost_header_prices_the_tokens_and_metrics_add_up(gateway: Gateway, tokenizer: Any) -> None:
    texts = ["How long is the kettle warranty?", "Where is Pier 4?", "Tide tables for March"]
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    before = await gateway.scrape()
    response = await post(gateway, {"model": NAME, "input": texts})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == tokens
    cost = float(response.headers["x-turnout-cost-usd"])
    assert cost == pytest.approx(tokens * PRICE / 1e6, rel=1e-12)
    assert "e" not in response.headers["x-turnout-cost-usd"]  # fixed point, as on completions
    after = await gateway.grown(before, "turnout_requests_total", 1, **LABELS, status="200")
    series = {k: v for k, v in LABELS.items() if k != "endpoint"}
    assert after.value("turnout_tokens_total", **series, direction="prompt") == pytest.approx(
        before.value("turnout_tokens_total", **series, direction="prompt") + tokens
    )
    assert after.value("turnout_cost_dollars_total", **series, component="embedding") == pytest.approx(
        before.value("turnout_cost_dollars_total", **series, component="embedding") + cost, rel=1e-9
    )
    duration = "turnout_request_duration_seconds_count"
    assert after.value(duration, **series, stream="false") == before.value(duration, **series, stream="false") + 1
    runs = "turnout_embedding_duration_seconds_count"
    assert after.value(runs, kind="api") > before.value(runs, kind="api")  # the model ran for these new texts
    assert after.value(runs, kind="query") == before.value(runs, kind="query")  # not counted as routing's


async def test_a_lone_text_is_cached_and_a_batch_does_not_fill_the_cache(gateway: Gateway) -> None:
    runs = "turnout_embedding_duration_seconds_count"

    async def model_runs(body: dict[str, Any]) -> float:
        before = (await gateway.scrape()).value(runs, kind="api")
        response = await post(gateway, body)
        assert response.status_code == 200, response.text
        return (await gateway.scrape()).value(runs, kind="api") - before  # observed before the answer left

    lone = "Is the harbour office open on Sundays?"
    assert await model_runs({"model": NAME, "input": lone}) == 1
    assert await model_runs({"model": NAME, "input": lone}) == 0  # from the cache
    assert await model_runs({"model": NAME, "input": [lone]}) == 0  # a batch reads the cache too
    batched = ["Are dogs allowed on the ferry?", "Can I pay by card at the office?"]
    assert await model_runs({"model": NAME, "input": batched}) == 1
    assert await model_runs({"model": NAME, "input": batched[0]}) == 1  # the batch left no trace in the cache


# -- refusals -----------------------------------------------------------------------------------------------

LONG = "harbour " * 300  # about 300 tokens: more than the model's 256
MEDIUM = DOCUMENT + " Bring the receipt."  # 28 tokens, so MAX_INPUTS of them are more than MAX_REQUEST_TOKENS

# Bodies that are not a request yet: recorded before the model is known, under policy "none".
MALFORMED = [
    pytest.param(b"", 400, None, None, id="empty-body"),
    pytest.param(b"{not json", 400, None, None, id="not-json"),
    pytest.param(b'["a"]', 400, None, None, id="array-body"),
    pytest.param({"input": "hi"}, 400, None, "model", id="model-missing"),
    pytest.param({"model": 7, "input": "hi"}, 400, None, "model", id="model-int"),
    pytest.param({"model": NAME}, 400, None, "input", id="input-missing"),
    pytest.param({"model": NAME, "input": None}, 400, None, "input", id="input-null"),
    pytest.param({"model": NAME, "input": ""}, 400, None, "input", id="input-empty-string"),
    pytest.param({"model": NAME, "input": []}, 400, None, "input", id="input-empty-list"),
    pytest.param({"model": NAME, "input": 42}, 400, None, "input", id="input-number"),
    pytest.param({"model": NAME, "input": {"text": "hi"}}, 400, None, "input", id="input-object"),
    pytest.param({"model": NAME, "input": ["hi", 3]}, 400, None, "input.1", id="input-list-with-number"),
    pytest.param({"model": NAME, "input": ["hi", ""]}, 400, None, "input.1", id="input-list-with-empty"),
    pytest.param({"model": NAME, "input": [9906, 11, 1917]}, 400, None, "input", id="token-ids"),
    pytest.param({"model": NAME, "input": [[9906], [1917]]}, 400, None, "input", id="token-id-lists"),
    pytest.param({"model": NAME, "input": "hi", "encoding_format": "int8"}, 400, None, "encoding_format", id="format"),
    pytest.param({"model": NAME, "input": "hi", "dimensions": "384"}, 400, None, "dimensions", id="dimensions-str"),
    pytest.param({"model": NAME, "input": "hi", "user": 5}, 400, None, "user", id="user-int"),
]
# Requests naming the served model that break one of its rules or limits: recorded under the model.
OVER_LIMITS = [
    pytest.param({"model": NAME, "input": "hi", "dimensions": 256}, 400, None, "dimensions", id="dimensions-other"),
    pytest.param({"model": NAME, "input": ["hi"] * (MAX_INPUTS + 1)}, 400, None, "input", id="too-many-inputs"),
    pytest.param({"model": NAME, "input": LONG}, 400, "context_length_exceeded", "input", id="too-long"),
    pytest.param({"model": NAME, "input": ["hi", LONG]}, 400, "context_length_exceeded", "input.1", id="too-long-1"),
    pytest.param({"model": NAME, "input": "x" * 5000}, 400, "context_length_exceeded", "input", id="too-many-chars"),
    pytest.param(
        {"model": NAME, "input": [MEDIUM] * MAX_INPUTS}, 413, "request_too_large", "input", id="too-many-tokens"
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "under"),
    [pytest.param(*p.values, REFUSED, id=p.id) for p in MALFORMED]
    + [pytest.param(*p.values, LABELS, id=p.id) for p in OVER_LIMITS],
)
async def test_refusals_are_envelopes_naming_the_field_and_are_counted(
    gateway: Gateway, body: Any, status: int, code: str | None, param: str | None, under: dict[str, str]
) -> None:
    before = await gateway.scrape()
    response = await post(gateway, body)
    error = assert_envelope(response, status, code)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert response.headers["x-turnout-cost-usd"] == "0"
    after = await gateway.grown(before, "turnout_requests_total", 1, **under, status=str(status))
    error_type = code or "invalid_request_error"
    assert (
        after.value("turnout_errors_total", type=error_type)
        == before.value("turnout_errors_total", type=error_type) + 1
    )
    assert after.value("turnout_tokens_total", route_kind="embedding") == before.value(
        "turnout_tokens_total", route_kind="embedding"
    )


async def test_messages_say_what_to_do(gateway: Gateway) -> None:
    token_ids = (await post(gateway, {"model": NAME, "input": [9906, 11]})).json()["error"]["message"]
    assert "send the text" in token_ids
    assert "check_embedding_ctx_length=False" in token_ids
    too_long = (await post(gateway, {"model": NAME, "input": ["hi", LONG]})).json()["error"]["message"]
    assert "input.1 is 302 tokens" in too_long
    assert "at most 256" in too_long
    dimensions = (await post(gateway, {"model": NAME, "input": "hi", "dimensions": 256})).json()["error"]["message"]
    assert "384" in dimensions
    too_many = (await post(gateway, {"model": NAME, "input": ["hi"] * 17})).json()["error"]["message"]
    assert f"at most {MAX_INPUTS}" in too_many


async def test_an_unknown_model_is_404_naming_the_served_one(gateway: Gateway, client: openai.AsyncOpenAI) -> None:
    before = await gateway.scrape()
    response = await post(gateway, {"model": "text-embedding-3-small", "input": "hi"})
    error = assert_envelope(response, 404, "model_not_found", param="model")
    assert "'text-embedding-3-small'" in error["message"]
    assert repr(NAME) in error["message"]
    await gateway.grown(before, "turnout_requests_total", 1, **REFUSED, status="404")
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model=BASE, input="hi")  # the chat model is not an embedding model


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key"], ids=["missing", "unknown"])
async def test_without_a_valid_key_it_is_401_and_counted(gateway: Gateway, authorization: str | None) -> None:
    before = await gateway.scrape()
    response = await post(
        gateway, {"model": NAME, "input": "hi"}, {} if authorization is None else {"authorization": authorization}
    )
    assert_envelope(response, 401, "invalid_api_key")
    await gateway.grown(before, "turnout_requests_total", 1, **REFUSED, status="401")
    with pytest.raises(openai.AuthenticationError):
        await gateway.openai.embeddings.create(model=NAME, input="hi")  # its key is "unused"


async def test_other_methods_are_405(gateway: Gateway) -> None:
    assert_envelope(await gateway.http.get(PATH, headers=AUTH), 405, "method_not_allowed")


# -- listing --------------------------------------------------------------------------------------------------


async def test_models_list_the_embedding_model_with_its_limits(gateway: Gateway, client: openai.AsyncOpenAI) -> None:
    listed = {model.id: model for model in (await client.models.list()).data}
    assert set(listed) == {BASE, "kb-bot", NAME}
    info = (listed[NAME].model_extra or {})["turnout"]
    assert info == {
        "kind": "embedding",
        "dimension": 384,
        "max_input_tokens": 256,
        "max_inputs": MAX_INPUTS,
        "max_request_tokens": MAX_REQUEST_TOKENS,
    }
    one = await client.models.retrieve(NAME)
    assert (one.model_extra or {})["turnout"] == info
