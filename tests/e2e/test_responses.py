"""``POST /v1/responses`` end to end: the official ``openai`` client and the OpenAI Agents SDK's default model
class through the gateway process, against real vLLM's own Responses API (base model and adapters), the
OpenAI route through litellm against a real OpenAI-compatible server (vLLM under a fine-tune's name), and
retrieval putting its context into ``instructions``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, set_tracing_disabled

from tests.support.gateway import GatewayProcess
from tests.support.recorder import RecordingProxy
from tests.support.stack import ADAPTERS, BASE, FINE_TUNE, gateway_config

QUESTION = "Tell me about the weather in the harbour today."
INSTRUCTIONS = "You are a terse harbour guide."
HARBOUR = "The Acme harbour office on Pier 4 opens at 7:30 and closes at 16:00 on weekdays."
PRICE = {"input": 0.15, "output": 0.6, "cached_input": 0.075}  # dollars per million tokens, for the fine-tune


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def direct(vllm: Any) -> openai.OpenAI:
    """vLLM itself, to compare the gateway's answers with."""
    return openai.OpenAI(base_url=vllm.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def stack(
    vllm: Any, proxy: RecordingProxy, assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway behind the recording proxy with the OpenAI route (litellm to vLLM under the fine-tune's
    name) and a retrieval collection answered by an adapter."""
    workdir = tmp_path_factory.mktemp("responses")
    config = gateway_config(proxy.url, assets)
    config["openai"] = {"api_base": vllm.url + "/v1", "api_key": "sk-loopback"}
    config["costs"]["openai"] = {"models": {FINE_TUNE: PRICE}}
    config["rag"] = {"store": {"path": str(workdir / "qdrant")}, "collections": {"kb": {"score_threshold": 0.3}}}
    config["policies"] = {
        "hosted": {"default": f"openai:{FINE_TUNE}"},
        "kb-bot": {"default": "rag:kb+adapter:formal"},
    }
    with GatewayProcess(config, workdir, localstack.free_port()) as process:
        documents = [{"id": "harbour", "title": "Harbour office", "text": HARBOUR}]
        ingested = httpx.post(
            process.url + "/v1/rag/collections/kb/documents", json={"documents": documents}, timeout=300
        )
        assert ingested.status_code == 200, ingested.text
        yield process


def self_hosted_cost(config: dict[str, Any], input_tokens: int, output_tokens: int) -> float:
    vllm = config["costs"]["vllm"]
    seconds = input_tokens / vllm["prompt_tokens_per_second"] + output_tokens / vllm["completion_tokens_per_second"]
    return float(vllm["gpu_hour_usd"] / 3600 * seconds)


def test_base_and_adapters_answer_as_vllm_does_streaming_and_not(
    gateway: GatewayProcess, client: openai.OpenAI, direct: openai.OpenAI
) -> None:
    answers = {}
    for model in (BASE, *ADAPTERS[:2]):  # one at a time: vLLM's CPU kernels mix up base and LoRA in one batch
        ask: dict[str, Any] = {"model": model, "input": QUESTION, "max_output_tokens": 8, "temperature": 0}
        raw = client.responses.with_raw_response.create(**ask)
        reply = raw.parse()
        assert raw.headers["x-turnout-route"] == (f"base:{BASE}" if model == BASE else f"adapter:{model}")
        assert reply.output_text, f"{model} gave an empty answer"
        assert reply.output_text == direct.responses.create(**ask).output_text
        assert reply.usage is not None
        assert reply.usage.output_tokens == 8
        cost = self_hosted_cost(gateway.config, reply.usage.input_tokens, reply.usage.output_tokens)
        assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(cost, rel=1e-9)

        received = list(client.responses.create(**ask, stream=True))
        text = "".join(e.delta for e in received if e.type == "response.output_text.delta")
        assert text == reply.output_text
        completed = received[-1]
        assert completed.type == "response.completed"
        assert completed.response.usage is not None
        turnout = (completed.response.model_extra or {})["turnout"]
        assert turnout == {"cost_usd": pytest.approx(cost, rel=1e-9), "estimated": False}
        answers[model] = reply.output_text
    assert len(set(answers.values())) == 3, answers


def test_responses_are_counted_under_their_own_endpoint(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    before = localstack.scrape_metrics(gateway.url)
    client.responses.create(model=ADAPTERS[0], input=QUESTION, max_output_tokens=2)
    after = localstack.scrape_metrics(gateway.url)
    labels = {"endpoint": "responses", "policy": ADAPTERS[0], "status": "200"}
    grown = localstack.metric_total(after, "turnout_requests_total", **labels) - localstack.metric_total(
        before, "turnout_requests_total", **labels
    )
    assert grown == 1


def test_failures_are_envelopes_the_client_raises(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="hi")
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as stateful:
        client.responses.create(model=BASE, input="hi", previous_response_id="resp_123")
    assert isinstance(stateful.value.body, dict)
    assert (stateful.value.body["code"], stateful.value.body["param"]) == (
        "unsupported_parameter",
        "previous_response_id",
    )
    with pytest.raises(openai.BadRequestError) as rejected:  # vLLM's own refusal, relayed
        client.responses.create(model=BASE, input="hi", max_output_tokens=100_000)
    assert isinstance(rejected.value.body, dict)
    assert (rejected.value.body["code"], rejected.value.body["param"]) == ("upstream_rejected", "max_output_tokens")


def test_the_openai_route_answers_through_litellm(stack: GatewayProcess, direct: openai.OpenAI) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    ask: dict[str, Any] = {"input": QUESTION, "max_output_tokens": 16, "temperature": 0}  # 16: OpenAI's minimum
    expected = direct.responses.create(model=FINE_TUNE, **ask).output_text
    raw = client.responses.with_raw_response.create(model="hosted", **ask)
    reply = raw.parse()
    assert raw.headers["x-turnout-route"] == f"openai:{FINE_TUNE}"
    assert reply.output_text == expected
    assert reply.usage is not None
    assert reply.usage.output_tokens == 16
    cost = (reply.usage.input_tokens * PRICE["input"] + reply.usage.output_tokens * PRICE["output"]) / 1e6
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(cost, rel=1e-9)

    with client.responses.stream(model="hosted", **ask) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == expected
    assert (final.model_extra or {})["turnout"]["cost_usd"] == pytest.approx(cost, rel=1e-9)


def test_retrieval_puts_its_context_into_instructions_and_cites(stack: GatewayProcess, proxy: RecordingProxy) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    proxy.clear()
    ask: dict[str, Any] = {"model": "kb-bot", "input": "When does the harbour office open on weekdays?"}
    raw = client.responses.with_raw_response.create(**ask, instructions="Answer briefly.", max_output_tokens=8)
    assert raw.headers["x-turnout-route"] == "rag:kb+adapter:formal"
    assert raw.headers["x-turnout-citations"] == "1"
    citations = (raw.parse().model_extra or {})["citations"]
    assert [c["document"] for c in citations] == ["harbour"]
    [sent] = [call for call in proxy.calls if call.path == "/v1/responses"]
    assert sent.body["model"] == "formal"
    assert HARBOUR in sent.body["instructions"]
    assert sent.body["instructions"].endswith("\n\nAnswer briefly.")  # the client's own instructions, after

    with client.responses.stream(**ask, max_output_tokens=8) as stream:
        final = stream.get_final_response()
    extra = final.model_extra or {}
    assert [c["document"] for c in extra["citations"]] == ["harbour"]
    assert extra["turnout"]["cost_usd"] >= 0


async def test_the_agents_sdk_default_model_gets_answers_through_the_gateway(gateway: GatewayProcess) -> None:
    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    for model in (BASE, ADAPTERS[0]):
        expected = await client.responses.create(
            model=model,
            instructions=INSTRUCTIONS,
            input=[{"role": "user", "content": QUESTION}],
            max_output_tokens=12,
            temperature=0,
        )
        settings = ModelSettings(temperature=0, max_tokens=12)
        agent = Agent(
            name="guide", instructions=INSTRUCTIONS, model=OpenAIResponsesModel(model, client), model_settings=settings
        )
        streamed = Runner.run_streamed(agent, QUESTION)
        async for _ in streamed.stream_events():
            pass
        assert streamed.final_output == expected.output_text
        assert streamed.context_wrapper.usage.output_tokens == 12

        # A real model ends its answer; the tiny random one runs to the token limit, which the SDK's
        # non-streamed run treats as a failure. So it stops at a word of its own answer (vLLM's `stop`).
        stop = expected.output_text.split()[-1]
        stopped = agent.clone(model_settings=ModelSettings(temperature=0, max_tokens=12, extra_body={"stop": [stop]}))
        result = await Runner.run(stopped, QUESTION)
        assert result.final_output == expected.output_text[: expected.output_text.index(stop)]
    await client.close()
