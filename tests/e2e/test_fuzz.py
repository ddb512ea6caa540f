"""Thousands of generated requests against a real gateway process, in front of a fast OpenAI-compatible
upstream (``bench/overhead/upstream.py``): every request shape the gateway serves, with valid, odd and
hostile values in every field, and raw bytes. None may get a 5xx or a traceback; every refusal is the
OpenAI envelope. (The gateway's input handling is what is fuzzed; the upstream only answers.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import localstack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fuzz-model"
FAST = ["--chunks", "2", "--gap-ms", "0"]  # streams of two chunks, no pauses
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/route/explain", "/v1/embeddings"]

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=24)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
models = st.sampled_from([MODEL, "desk", "nope", "", "x" * 300]) | json_values
roles = st.sampled_from(["user", "system", "assistant", "tool", "developer", "wizard"]) | json_values
parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_text", "?"]) | json_values, "text": json_values}
    ),
    max_size=3,
)
contents = st.text(max_size=60) | parts | json_values
messages = st.fixed_dictionaries(
    {"role": roles, "content": contents}, optional={"name": json_values, "tool_calls": json_values}
)
common = {
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values}) | json_values,
    "max_tokens": st.integers(-5, 40) | json_values,
    "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8) | json_values, max_size=3) | json_values,
    "user": json_values,
    "temperature": json_values,
}
chat = st.fixed_dictionaries(
    {"model": models, "messages": st.lists(messages, max_size=4) | json_values}, optional=common
)
completion = st.fixed_dictionaries(
    {"model": models, "prompt": st.text(max_size=60) | st.lists(st.integers(-3, 50000), max_size=5) | json_values},
    optional=common,
)
responses = st.fixed_dictionaries(
    {"model": models, "input": st.text(max_size=60) | st.lists(messages, max_size=3) | json_values},
    optional={**common, "instructions": json_values, "previous_response_id": json_values},
)
bodies = chat | completion | responses | json_values
CONTENT_TYPES = ["application/json", "text/plain", "", "application/json; charset=latin-1"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("fuzz")
    port = localstack.free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/overhead/upstream.py"), "--port", str(port), "--model", MODEL, *FAST],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config: dict[str, Any] = {
        "server": {"log_level": "warning"},
        "vllm": {"url": f"http://127.0.0.1:{port}", "model": MODEL},
        "policies": {
            "desk": {
                "rules": [{"name": "urgent", "when": {"keywords": ["urgent"]}, "target": "base"}],
                "default": "base",
            }
        },
    }
    process = GatewayProcess(config, workdir, localstack.free_port())
    try:
        yield process.start()
    finally:
        process.stop()
        upstream.terminate()  # also when the gateway did not start
        upstream.wait(10)


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as shared:  # one kept-alive connection, reopened if refused
        yield shared


def _no_server_error(answer: httpx.Response, path: str) -> None:
    if path == "/v1/responses" and answer.status_code == 502:
        # The upstream serves no Responses API (its 404 for a request the gateway accepted): the upstream's
        # answer, relayed as such; every other 5xx would be the gateway's own.
        assert answer.json()["error"]["code"] == "upstream_model_missing"
        return
    assert answer.status_code < 500, answer.text[:500]
    assert "Traceback" not in answer.text
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str)
        assert error["message"]


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(path=st.sampled_from(PATHS), body=bodies)
def test_generated_bodies_never_get_a_server_error(client: httpx.Client, path: str, body: Any) -> None:
    raw = json.dumps(body).encode()
    answer = client.post(path, content=raw, headers={"content-type": "application/json"})
    _no_server_error(answer, path)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    path=st.sampled_from(PATHS),
    raw=st.binary(max_size=300),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_generated_bytes_never_get_a_server_error(
    client: httpx.Client, path: str, raw: bytes, content_type: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = client.post(path, content=raw, headers=headers)
    _no_server_error(answer, path)
