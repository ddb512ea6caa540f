"""Requests the gateway refuses itself, in-process: malformed bodies, unknown models, wrong methods, bodies
over the limit, missing or wrong API keys. Each gets the OpenAI envelope with the README's status, type,
code and param, never reaches the upstream, and is counted (before routing: under policy ``none``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import (
    CHAT,
    TEXT,
    Gateway,
    Scrape,
    assert_envelope,
    chat_body,
    completion_body,
    gateway_config,
    raw_exchange,
    serve_gateway,
)

LIMIT = 2048  # server.max_body_bytes of the gateway under test
KEY = "sk-test-acme"


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, adapter_dir: Path) -> AsyncIterator[Gateway]:
    config = gateway_config(upstream.url, adapter_dir, ["formal"], server={"max_body_bytes": LIMIT})
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(scope="module")
async def locked(upstream: FaultyUpstream, adapter_dir: Path) -> AsyncIterator[Gateway]:
    """A gateway with API keys: one by its digest, one given in clear."""
    other = "0" * 64
    keys = [{"key": KEY, "tenant": "acme"}, {"key_sha256": other, "admin": True}]
    async with serve_gateway(gateway_config(upstream.url, adapter_dir, ["formal"], auth={"keys": keys})) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


async def assert_counted(gateway: Gateway, before: Scrape, status: int, error_type: str) -> None:
    """One more request refused before routing with ``status``, and one more error of ``error_type``."""
    after = await gateway.grown(
        before, "turnout_requests_total", 1, policy="none", route_kind="none", target="none", status=str(status)
    )
    assert (
        after.value("turnout_errors_total", type=error_type)
        == before.value("turnout_errors_total", type=error_type) + 1
    )


MALFORMED = [
    pytest.param(CHAT, b"", None, id="empty"),
    pytest.param(CHAT, b" \r\n\t ", None, id="blank"),
    pytest.param(TEXT, b'{"model": "house-base", "prompt": ', None, id="truncated-json"),
    pytest.param(CHAT, b"\xff\xfe\x00garbage", None, id="not-utf8"),
    pytest.param(CHAT, b"[" * 1500, None, id="nested-too-deep"),
    pytest.param(CHAT, b'{"model": NaN}', None, id="nan"),
    pytest.param(CHAT, b"[1, 2]", None, id="array"),
    pytest.param(TEXT, b"null", None, id="null"),
    pytest.param(TEXT, b'"a prompt"', None, id="string"),
    pytest.param(CHAT, b'{"messages": [{"role": "user", "content": "hi"}]}', "model", id="model-missing"),
    pytest.param(CHAT, b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model", id="model-int"),
    pytest.param(TEXT, b'{"model": "", "prompt": "hi"}', "model", id="model-empty"),
    pytest.param(TEXT, b'{"model": ["house-base"], "prompt": "hi"}', "model", id="model-list"),
    pytest.param(CHAT, b'{"model": "house-base"}', "messages", id="messages-missing"),
    pytest.param(CHAT, b'{"model": "house-base", "messages": "hi"}', "messages", id="messages-string"),
    pytest.param(CHAT, b'{"model": "house-base", "messages": []}', "messages", id="messages-empty"),
    pytest.param(
        CHAT,
        b'{"model": "house-base", "messages": [{"role": "wizard", "content": "hi"}]}',
        "messages.0.role",
        id="role",
    ),
    pytest.param(TEXT, b'{"model": "house-base"}', "prompt", id="prompt-missing"),
    pytest.param(
        TEXT,
        b'{"model": "house-base", "prompt": {"text": "hi"}}',
        "prompt",
        id="prompt-object",
    ),
    pytest.param(
        CHAT,
        b'{"model": "house-base", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        "stream",
        id="stream",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), MALFORMED)
async def test_malformed_bodies_get_a_400_naming_the_field(
    gateway: Gateway, upstream: FaultyUpstream, path: str, body: bytes, param: str | None
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(path, content=body, headers={"content-type": "application/json"})
    error = assert_envelope(response, 400, None)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.requests == []
    await assert_counted(gateway, before, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("path", "body"), [(CHAT, chat_body("no-such-model")), (TEXT, completion_body("adapter:formal"))]
)
async def test_an_unknown_model_is_404_model_not_found_counted_under_no_policy(
    gateway: Gateway, upstream: FaultyUpstream, path: str, body: dict[str, object]
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(path, json=body)
    error = assert_envelope(response, 404, "model_not_found", param="model")
    assert repr(body["model"]) in error["message"]
    assert upstream.requests == []
    await assert_counted(gateway, before, 404, "model_not_found")
    assert (await gateway.scrape()).value("turnout_requests_total", policy=str(body["model"])) == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", [CHAT, TEXT, CHAT + "/"])
async def test_other_methods_on_a_completion_path_are_405(
    gateway: Gateway, upstream: FaultyUpstream, method: str, path: str
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.request(method, path, content=json.dumps(chat_body(BASE)))
    error = assert_envelope(response, 405, "method_not_allowed")
    assert method in error["message"]
    assert upstream.requests == []
    await assert_counted(gateway, before, 405, "method_not_allowed")


def padded(size: int) -> bytes:
    """A valid chat body of exactly ``size`` bytes."""
    body = json.dumps(chat_body(BASE, padding="")).encode()
    return body.replace(b'"padding": ""', b'"padding": "' + b"u" * (size - len(body)) + b'"')


async def test_a_body_of_exactly_the_limit_is_served_and_one_byte_more_is_413(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    at_limit, over = padded(LIMIT), padded(LIMIT + 1)
    assert (len(at_limit), len(over)) == (LIMIT, LIMIT + 1)
    served = await gateway.http.post(CHAT, content=at_limit)
    assert served.status_code == 200, served.text
    before = await gateway.scrape()
    response = await gateway.http.post(CHAT, content=over)
    assert_envelope(response, 413, "request_too_large")
    assert len(upstream.requests) == 1
    await assert_counted(gateway, before, 413, "request_too_large")


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    """The client announces a body larger than the limit and sends none of it: the answer comes anyway."""
    before = await gateway.scrape()
    head = f"POST {TEXT} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {10 * LIMIT}\r\n\r\n"
    response = await raw_exchange(gateway.port, head.encode())
    assert response.status == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert str(10 * LIMIT) in error["message"]
    assert response.headers["x-request-id"]
    assert upstream.requests == []
    await assert_counted(gateway, before, 413, "request_too_large")


async def test_a_chunked_body_without_length_is_cut_off_at_the_limit(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    head = f"POST {CHAT} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    body = padded(3 * LIMIT)
    chunks = [body[i : i + 500] for i in range(0, len(body), 500)]
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks] + [b"0\r\n\r\n"]
    response = await raw_exchange(gateway.port, head.encode(), parts)
    assert response.status == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []
    await assert_counted(gateway, before, 413, "request_too_large")


async def test_a_chunked_body_within_the_limit_is_served(gateway: Gateway, upstream: FaultyUpstream) -> None:
    head = f"POST {CHAT} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    body = padded(LIMIT)
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + 300]), body[i : i + 300]) for i in range(0, len(body), 300)]
    response = await raw_exchange(gateway.port, head.encode(), [*parts, b"0\r\n\r\n"])
    assert response.status == 200, response.body
    [seen] = upstream.requests
    assert seen.body == body


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {KEY}", "Bearer", KEY],
    ids=["missing", "unknown", "basic", "empty-bearer", "no-scheme"],
)
async def test_without_a_valid_api_key_completions_are_401(
    locked: Gateway, upstream: FaultyUpstream, authorization: str | None
) -> None:
    before = await locked.scrape()
    headers = {} if authorization is None else {"authorization": authorization}
    response = await locked.http.post(CHAT, json=chat_body(BASE), headers=headers)
    error = assert_envelope(response, 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert KEY not in response.text
    assert upstream.requests == []
    await assert_counted(locked, before, 401, "invalid_api_key")


async def test_a_valid_api_key_is_served_and_metrics_stay_open(locked: Gateway, upstream: FaultyUpstream) -> None:
    async with locked.client(api_key=KEY) as client:
        reply = await client.completions.create(model="formal", prompt="Once", max_tokens=4)
    assert reply.choices[0].text
    with pytest.raises(openai.AuthenticationError) as caught:
        await locked.openai.completions.create(model="formal", prompt="Once", max_tokens=4)  # key "unused"
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "invalid_api_key"
    assert [seen.model for seen in upstream.requests] == ["formal"]
    assert (await locked.http.get("/metrics")).status_code == 200  # no key: the scraper has none
