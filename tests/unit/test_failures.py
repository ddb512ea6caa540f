"""The one table from library exceptions and upstream statuses to the error tree.

The exceptions are the libraries' own (aiohttp's from a real refused connection, litellm's classes as it
defines them), so a class the table names by string that a library renames or moves makes these fail.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp
import httpx
import pytest

from gateway.errors import (
    RetrievalUnavailable,
    TurnoutError,
    UnsupportedEndpoint,
    UpstreamError,
    UpstreamModelMissing,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.failures import Boundary, for_status, translate
from gateway.protocol import sse
from gateway.protocol.envelope import error_message, is_route_miss


@pytest.fixture(scope="module")
def litellm_exceptions() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # as the gateway imports it: offline
    from litellm import exceptions

    return exceptions


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_an_unavailable_upstream() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(f"http://127.0.0.1:{_closed_port()}/v1/models")
    error = translate(caught.value, Boundary.SEND, "vllm at http://x")
    assert isinstance(error, UpstreamUnavailable)
    assert error.status == 503
    assert error.message == "cannot connect to vllm at http://x"
    assert error.falls_back


@pytest.mark.parametrize(
    ("exc", "boundary", "kind", "status"),
    [
        (aiohttp.ServerDisconnectedError(), Boundary.SEND, UpstreamUnavailable, 503),
        (aiohttp.ConnectionTimeoutError(), Boundary.SEND, UpstreamUnavailable, 503),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), Boundary.SEND, UpstreamUnavailable, 503),
        (TimeoutError(), Boundary.SEND, UpstreamTimeout, 504),
        (aiohttp.SocketTimeoutError(), Boundary.SEND, UpstreamTimeout, 504),  # a ClientError too: timeout first
        (aiohttp.ServerTimeoutError(), Boundary.SEND, UpstreamTimeout, 504),
        (aiohttp.ClientPayloadError("bad chunk"), Boundary.SEND, UpstreamError, 502),
        (TimeoutError(), Boundary.READ, UpstreamTimeout, 504),
        (aiohttp.SocketTimeoutError(), Boundary.READ, UpstreamTimeout, 504),
        (aiohttp.ClientPayloadError("bad chunk"), Boundary.READ, UpstreamError, 502),
        (TimeoutError(), Boundary.STREAM, UpstreamTimeout, 504),
        (aiohttp.SocketTimeoutError(), Boundary.STREAM, UpstreamTimeout, 504),
        (ConnectionResetError(), Boundary.STREAM, UpstreamError, 502),
        (aiohttp.ClientPayloadError("bad chunk"), Boundary.STREAM, UpstreamError, 502),
        (ValueError("store says no"), Boundary.RETRIEVAL, RetrievalUnavailable, 503),
        (TimeoutError(), Boundary.RETRIEVAL, RetrievalUnavailable, 503),
    ],
)
def test_each_boundary_maps_by_its_first_matching_rule(
    exc: BaseException, boundary: Boundary, kind: type[TurnoutError], status: int
) -> None:
    error = translate(exc, boundary, "subject")
    assert type(error) is kind
    assert error.status == status
    assert "subject" in error.message


def test_rules_are_read_in_order_like_except_clauses() -> None:
    # ConnectionTimeoutError is a TimeoutError too: its own rule, listed first, decides (nothing was sent)
    assert isinstance(aiohttp.ConnectionTimeoutError(), TimeoutError)
    assert type(translate(aiohttp.ConnectionTimeoutError(), Boundary.SEND, "s")) is UpstreamUnavailable


def test_an_exception_no_rule_names_is_a_bug_not_an_upstream_failure() -> None:
    error = translate(KeyError("x"), Boundary.SEND, "vllm")
    assert type(error) is TurnoutError
    assert error.status == 500


def test_a_gateway_error_stays_what_it_is() -> None:
    original = UpstreamTimeout("already ours")
    assert translate(original, Boundary.STREAM, "the upstream") is original


def test_retrieval_failures_name_the_subject_and_the_cause() -> None:
    error = translate(RuntimeError("disk full"), Boundary.RETRIEVAL, "retrieval from collection 'docs'")
    assert error.message == "retrieval from collection 'docs' failed (RuntimeError: disk full)"
    assert error.code == "retrieval_unavailable"


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))


@pytest.mark.parametrize(
    ("name", "kwargs", "kind", "status"),
    [
        ("Timeout", {}, UpstreamTimeout, 504),
        ("APIConnectionError", {}, UpstreamUnavailable, 503),
        ("ServiceUnavailableError", {}, UpstreamUnavailable, 503),
        ("RateLimitError", {}, UpstreamUnavailable, 503),
        ("NotFoundError", {}, UpstreamModelMissing, 502),
        ("AuthenticationError", {}, UpstreamError, 502),
        ("PermissionDeniedError", {"response": _response(403)}, UpstreamError, 502),
        ("BadRequestError", {}, UpstreamRejected, 400),
        ("ContextWindowExceededError", {}, UpstreamRejected, 400),  # a BadRequestError: relayed, not retried
        ("UnprocessableEntityError", {"response": _response(422)}, UpstreamRejected, 422),
    ],
)
def test_litellm_exceptions(
    litellm_exceptions: Any, name: str, kwargs: dict[str, Any], kind: type[TurnoutError], status: int
) -> None:
    exc = getattr(litellm_exceptions, name)(
        message="it went wrong", model="gpt-4o-mini", llm_provider="openai", **kwargs
    )
    error = translate(exc, Boundary.OPENAI, "'gpt-4o-mini'")
    assert type(error) is kind
    assert error.status == status
    assert "it went wrong" in error.message
    assert error.falls_back is (kind is not UpstreamRejected)


def test_a_server_at_openai_api_base_without_the_endpoint_is_unsupported_not_a_missing_model(
    litellm_exceptions: Any,
) -> None:
    """litellm relays a server's own 404 for a path it does not have; the model is not what is missing."""
    no_path = litellm_exceptions.NotFoundError(
        message='OpenAIException - {"detail":"Not Found"}', model="m", llm_provider="openai"
    )
    error = translate(no_path, Boundary.OPENAI, "'m'")
    assert type(error) is UnsupportedEndpoint
    assert (error.status, error.code, error.falls_back) == (400, "unsupported_endpoint", True)
    no_model = litellm_exceptions.NotFoundError(
        message="The model `m` does not exist", model="m", llm_provider="openai"
    )
    assert type(translate(no_model, Boundary.OPENAI, "'m'")) is UpstreamModelMissing


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, b'{"detail":"Not Found"}', UnsupportedEndpoint),  # the web framework's: no such path
        (405, b'{"detail":"Method Not Allowed"}', UnsupportedEndpoint),
        (501, b'{"error":{"message":"The model does not support Responses API"}}', UnsupportedEndpoint),
        (404, b'{"error":{"message":"The model `x` does not exist.","param":"model"}}', UpstreamModelMissing),
    ],
)
def test_a_server_without_the_endpoint_is_told_from_one_without_the_model(
    status: int, body: bytes, kind: type[TurnoutError]
) -> None:
    message, param = error_message(body)
    error = for_status(
        status, message, param, subject="vllm", model="formal", path="/v1/responses", no_such_path=is_route_miss(body)
    )
    assert type(error) is kind
    if kind is UnsupportedEndpoint:
        assert "/v1/responses" in error.message
        assert error.falls_back


def test_litellm_reports_a_refused_connection_as_a_server_error(litellm_exceptions: Any) -> None:
    refused = litellm_exceptions.InternalServerError(
        message="Connection error.", model="gpt-4o-mini", llm_provider="openai"
    )
    assert type(translate(refused, Boundary.OPENAI, "m")) is UpstreamUnavailable
    broken = litellm_exceptions.InternalServerError(message="boom", model="gpt-4o-mini", llm_provider="openai")
    error = translate(broken, Boundary.OPENAI, "m")
    assert type(error) is UpstreamError
    assert error.message.startswith("OpenAI request failed: InternalServerError")


@pytest.mark.parametrize(
    ("status", "kind", "answered"),
    [
        (400, UpstreamRejected, 400),
        (422, UpstreamRejected, 422),
        (401, UpstreamError, 502),  # the gateway's own credentials: not the client's fault
        (403, UpstreamError, 502),
        (404, UpstreamModelMissing, 502),
        (408, UpstreamTimeout, 504),
        (504, UpstreamTimeout, 504),
        (429, UpstreamUnavailable, 503),
        (503, UpstreamUnavailable, 503),
        (500, UpstreamError, 502),
    ],
)
def test_upstream_statuses(status: int, kind: type[TurnoutError], answered: int) -> None:
    error = for_status(status, "the server's words", "messages", subject="vllm", model="formal")
    assert type(error) is kind
    assert error.status == answered
    if kind is UpstreamRejected:
        assert (error.message, error.param) == ("the server's words", "messages")


def test_an_error_event_is_an_event_of_its_own() -> None:
    error = UpstreamTimeout("the upstream went silent mid-stream")
    event = sse.error_event(error)
    assert event.startswith(sse.DATA)
    assert event.endswith(sse.END)
    assert sse.parsed(event.strip()) == error.envelope()
