"""Two real vLLM servers behind the gateway: declared adapters on both, requests where their adapter is,
a replica stopped mid-traffic and started again, and two gateways sharing both replicas.

The second vLLM server starts once, for this file only (40-110 s, ~3.5 GB), beside the session's own; it is
started before the session's server is waited for, so on a cold session both start at once. Recording proxies
in front of both count every load and unload the gateways make; the test of a stopped replica talks to the
servers directly, since a proxy would answer for a server that is gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localstack
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.recorder import RecordingProxy
from tests.support.stack import BASE, MAX_LORA_RANK, gateway_config
from tests.support.vllm_api import loaded_adapters, unload_all

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write one line about lighthouses."}]
HEALTH = {"interval_s": 0.5, "timeout_s": 2, "eject_after": 2}
REPLICA = "x-turnout-replica"
VERSION = "x-turnout-adapter-version"


@pytest.fixture(scope="session")
def vllm_b(
    assets: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[localstack.VllmServer]:
    server = localstack.VllmServer(
        python=localstack.ensure_vllm_env(),
        model_dir=assets / "model",
        port=localstack.free_port(),
        served_model_name=BASE,
        log_path=tmp_path_factory.mktemp("vllm-b") / "vllm.log",
        max_lora_rank=MAX_LORA_RANK,
        max_loras=2,
    )
    server.start()
    try:
        request.getfixturevalue("vllm")  # the session's server starts meanwhile, if it is not up yet
        server.wait_ready(timeout=600)
        yield server
    finally:
        server.stop()


@pytest.fixture
def both(vllm: localstack.VllmServer, vllm_b: localstack.VllmServer) -> Iterator[list[localstack.VllmServer]]:
    """Both servers with no adapter loaded, before and after the test (the session's server is shared)."""
    servers = [vllm, vllm_b]
    for server in servers:
        unload_all(server.url)
    yield servers
    for server in servers:
        if server.is_running():
            unload_all(server.url)


@pytest.fixture
def proxies(both: list[localstack.VllmServer]) -> Iterator[list[RecordingProxy]]:
    started = [RecordingProxy(server.url) for server in both]
    for proxy in started:
        proxy.start()
    yield started
    for proxy in started:
        proxy.stop()


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, model: str, *, stream: bool = False, max_tokens: int = 4) -> str:
    """A chat request; the replica that answered (its x-turnout-replica)."""
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=PROMPT,
            max_tokens=max_tokens,
            temperature=0,
        )
        raw.parse()
        return raw.headers[REPLICA]
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    ) as response:
        for _ in response.parse():
            pass
        return response.headers[REPLICA]


def _until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)  # polling a real server against the deadline, not a timing assertion


def _name(url: str) -> str:
    return url.partition("://")[2]


def test_a_pinned_adapter_is_on_both_and_requests_go_where_their_adapter_is(
    both: list[localstack.VllmServer], proxies: list[RecordingProxy], assets: Path, start_gateway: Any
) -> None:
    config = gateway_config("", assets, max_resident=2)
    del config["vllm"]["url"]
    config["vllm"].update(replicas=[p.url for p in proxies], health=HEALTH)
    config["adapters"]["formal"]["pinned"] = True
    config["adapters"]["terse"]["min_replicas"] = 1
    gateway = start_gateway(config)
    _until(
        lambda: (
            all("formal" in loaded_adapters(s.url) for s in both)
            and sum("terse" in loaded_adapters(s.url) for s in both) == 1
        ),
        "formal on both servers and terse on one, as vLLM's own /v1/models says",
        60,
    )
    assert [p.loads("formal") and len(p.loads("formal")) for p in proxies] == [1, 1]
    completions = [c for p in proxies for c in p.calls if c.path == "/v1/chat/completions"]
    assert completions == []  # declared state, not a request, loaded them

    by_name = {_name(p.url): server for p, server in zip(proxies, both, strict=True)}
    client = _client(gateway)
    for stream in (False, True, False):
        home = _ask(client, "terse", stream=stream)
        assert "terse" in loaded_adapters(by_name[home].url)  # the replica that holds it answered
    homes = {_ask(client, "pirate") for _ in range(3)}  # cold: loaded once, then always there
    assert len(homes) == 1
    [home] = homes
    assert "pirate" in loaded_adapters(by_name[home].url)
    assert sum(len(p.loads("pirate")) for p in proxies) == 1
    assert {_ask(client, "formal") for _ in range(4)} == set(by_name)  # on both: shared by load
    assert all(p.unloads() == [] for p in proxies)


def test_two_gateways_share_both_replicas_without_a_failed_request_or_thrash(
    both: list[localstack.VllmServer], proxies: list[RecordingProxy], assets: Path, start_gateway: Any
) -> None:
    config = gateway_config("", assets, max_resident=2)
    del config["vllm"]["url"]
    config["vllm"].update(replicas=[p.url for p in proxies], health=HEALTH, eviction="vllm")
    gateways = [start_gateway(config), start_gateway(config)]
    models = [BASE, "formal", "terse", "pirate"]
    jobs = [(gateway, models[(i + n) % 4], i % 3 == 0) for n, gateway in enumerate(gateways) for i in range(24)]

    def run(job: tuple[GatewayProcess, str, bool]) -> str:
        gateway, model, stream = job
        return _ask(_client(gateway), model, stream=stream)

    with ThreadPoolExecutor(6) as pool:
        answered = list(pool.map(run, jobs))  # raises if any request failed
    assert len(answered) == len(jobs)
    for proxy in proxies:
        assert proxy.unloads() == []
        per_adapter = {name: len(proxy.loads(name)) for name in ("formal", "terse", "pirate")}
        assert all(count <= 2 for count in per_adapter.values()), per_adapter  # at most once per gateway
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(run, jobs))
    assert all(p.unloads() == [] for p in proxies)
    assert all(len(p.loads(name)) <= 2 for p in proxies for name in ("formal", "terse", "pirate"))


def _answer(client: openai.OpenAI, model: str, *, stream: bool = False) -> tuple[str, str | None, str]:
    """A chat answer's text, its x-turnout-adapter-version, and the model the answer names."""
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=PROMPT, max_tokens=8, temperature=0
        )
        completion = raw.parse()
        return completion.choices[0].message.content or "", raw.headers.get(VERSION), completion.model
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=PROMPT, max_tokens=8, temperature=0, stream=True
    ) as response:
        chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, response.headers.get(VERSION), chunks[0].model


def _turnout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120)


def _current(config_file: Path) -> str:
    listed = _turnout("adapters", "versions", "voice", "--config", str(config_file), "--json")
    assert listed.returncode == 0, listed.stderr
    current: str = json.loads(listed.stdout)["current"]
    return current


def test_a_pushed_version_is_served_on_both_replicas_without_a_failed_request_and_rolled_back(
    both: list[localstack.VllmServer], assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    config = gateway_config("", assets, max_resident=2)
    del config["vllm"]["url"]
    config["vllm"].update(replicas=[s.url for s in both], health=HEALTH)
    config["adapter_store"] = {"path": str(tmp_path / "store"), "watch_interval_s": 0.5}
    config["adapters"] = {
        "voice": {"store": "voice", "pinned": True},
        "formal": config["adapters"]["formal"],
        "terse": config["adapters"]["terse"],
    }
    config_file = tmp_path / "turnout.yaml"
    config_file.write_text(yaml.safe_dump(config))
    pushed = _turnout("adapters", "push", "voice", str(assets / "adapters" / "formal"), "--config", str(config_file))
    assert pushed.returncode == 0, pushed.stderr
    v1 = _current(config_file)
    gateway = start_gateway(config)
    client = _client(gateway)
    _until(lambda: all(f"voice@{v1}" in loaded_adapters(s.url) for s in both), "voice's version on both", 60)
    formal, terse = _answer(client, "formal")[0], _answer(client, "terse")[0]
    assert formal != terse  # the two sets of weights answer differently
    assert _answer(client, "voice") == (formal, v1, f"voice@{v1}")  # the answer names the version it came from

    outcomes: list[tuple[str, str | None]] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            try:
                text, version, _ = _answer(_client(gateway), "voice", stream=(turn + worker) % 2 == 0)
                outcomes.append((text, version))
            except openai.APIError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
    try:
        _until(lambda: len(outcomes) >= 6, "traffic on voice", 60)
        moved = _turnout("adapters", "push", "voice", str(assets / "adapters" / "terse"), "--config", str(config_file))
        assert moved.returncode == 0, moved.stderr
        v2 = _current(config_file)
        assert v2 != v1
        moved_at = len(outcomes)
        _until(
            lambda: sum(version == v2 for _, version in outcomes[moved_at:]) >= 6, "answers from the new version", 120
        )
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
    assert errors == []  # no request failed while the name moved
    assert {(text, version) for text, version in outcomes} <= {(formal, v1), (terse, v2)}  # each whole, one version
    assert outcomes[-1] == (terse, v2)
    _until(
        lambda: all(loaded_adapters(s.url) & {f"voice@{v1}", f"voice@{v2}"} == {f"voice@{v2}"} for s in both),
        "the new version on both servers and the old one unloaded",
        60,
    )

    rolled = _turnout("adapters", "rollback", "voice", "--config", str(config_file))
    assert rolled.returncode == 0, rolled.stderr
    _until(lambda: _answer(client, "voice")[1] == v1, "the rollback served", 60)
    assert _answer(client, "voice", stream=True)[:2] == (formal, v1)


@dataclass
class Outcome:
    started: float
    ended: float
    replica: str | None = None
    error: str | None = None


def test_a_replica_stopped_mid_traffic_and_started_again(
    both: list[localstack.VllmServer], assets: Path, start_gateway: Any
) -> None:
    a, b = both
    config = gateway_config("", assets, max_resident=2)
    del config["vllm"]["url"]
    config["vllm"].update(replicas=[a.url, b.url], health=HEALTH)
    config["adapters"]["formal"]["pinned"] = True
    gateway = start_gateway(config)
    _until(lambda: all("formal" in loaded_adapters(s.url) for s in both), "formal pinned on both", 60)

    outcomes: list[Outcome] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        client = _client(gateway)
        turn = 0
        while not stop.is_set():
            model, stream = (BASE, "formal")[turn % 2], (turn + worker) % 3 == 0
            turn += 1
            outcome = Outcome(time.monotonic(), 0.0)
            try:
                outcome.replica = _ask(client, model, stream=stream, max_tokens=16)
            except openai.APIError as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
            outcome.ended = time.monotonic()
            outcomes.append(outcome)

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
    try:
        _until(lambda: {o.replica for o in outcomes} >= {_name(a.url), _name(b.url)}, "traffic on both", 60)
        b.stop()  # SIGTERM to the whole server, with requests in flight on it
        stopped = time.monotonic()
        _until(lambda: sum(o.started > stopped for o in outcomes) >= 12, "a dozen requests after the stop", 120)
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
    failed = [o for o in outcomes if o.error is not None]
    assert all(o.started < stopped for o in failed), [o.error for o in failed]  # only those in flight on b
    assert len(failed) <= len(workers)
    after = [o for o in outcomes if o.started > stopped]
    assert {o.replica for o in after} == {_name(a.url)}

    b.start()  # the same port; vLLM comes back with no adapter loaded at run time
    b.wait_ready(timeout=300)
    _until(lambda: "formal" in loaded_adapters(b.url), "formal back on b without anyone asking", 60)
    client = _client(gateway)
    assert {_ask(client, "formal") for _ in range(4)} == {_name(a.url), _name(b.url)}
