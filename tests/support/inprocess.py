"""The gateway and the fault-injecting upstream served in the test's own event loop, over real sockets.

The completion path (request pipeline, fallbacks, streaming, disconnects, every error) is tested with
these in seconds instead of against vLLM. Both servers are ``uvicorn.Server`` tasks on loopback ports of
the session's loop, so tests drive them with async clients (``openai``, ``httpx``, raw sockets).

The gateway is reached only through :func:`serve_gateway` (``create_asgi_app``), ``gateway.config`` and
HTTP: tests of the hot path must not depend on how the gateway is built inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import struct
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_asgi_app
from gateway.config import TurnoutConfig
from gateway.fleet.discovery import Resolver
from gateway.fleet.placement import Placement
from tests.support.faulty_upstream import BASE, MAX_RANK, SAFETY_S, FaultyUpstream, quiet_drops

# -- serving ----------------------------------------------------------------------------------------

CHAT, TEXT, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"


class _Server(uvicorn.Server):
    """A uvicorn server for a task in a running loop: it leaves the process's signals alone and says
    when it has started (or failed to)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGINT and SIGTERM stay with pytest

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit as exc:  # uvicorn exits the process when the lifespan fails
            raise RuntimeError("the app failed to start; see the log") from exc
        finally:
            self.ready.set()


@contextlib.asynccontextmanager
async def _serving(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on ``host``:``port`` (a free port by default) for the duration of the block; yields its URL."""
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY on accepted connections only then, and without it
    # every answer on a kept-alive connection waits out the client's delayed ACK (about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", http="httptools", ws="none", log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn-{port}")
    try:
        async with asyncio.timeout(30):
            await server.ready.wait()
        if task.done() or not server.started:
            await task  # raises what stopped the start-up
            raise RuntimeError("the server stopped during start-up")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        if not server.ready.is_set():
            task.cancel()  # start-up hung: there is nothing to shut down gracefully
        await asyncio.wait({task})
    task.result()  # what went wrong on the way down, if anything did


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nowhere() -> str:
    """The URL of a loopback port nothing listens on: an upstream that is down."""
    return f"http://127.0.0.1:{_unused_port()}"


@contextlib.asynccontextmanager
async def serve_upstream(
    upstream: FaultyUpstream | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FaultyUpstream]:
    """Serve the upstream (on ``host``:``port``: a replica started again where it was, or one of several
    replicas behind one DNS name and port) for the duration of the block."""
    upstream = upstream or FaultyUpstream()
    with quiet_drops():
        async with _serving(upstream, host, port) as url:
            upstream.url = url
            try:
                yield upstream
            finally:
                upstream.clear()  # open any held answer, so the server can drain at once


@dataclass
class Gateway:
    """A running gateway: its URL, one HTTP client and one ``openai`` client for the test's calls."""

    url: str
    config: TurnoutConfig
    http: httpx.AsyncClient
    openai: AsyncOpenAI

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @classmethod
    @contextlib.asynccontextmanager
    async def connected(cls, url: str, config: TurnoutConfig) -> AsyncIterator[Gateway]:
        http = httpx.AsyncClient(base_url=url, timeout=SAFETY_S * 2)
        client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=SAFETY_S * 2)
        async with http, client:
            yield cls(url, config, http, client)

    def client(self, api_key: str = "unused") -> AsyncOpenAI:
        """Another ``openai`` client (close it), for instance with another API key."""
        return AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=SAFETY_S * 2)

    async def scrape(self) -> Scrape:
        response = await self.http.get("/metrics")
        assert response.status_code == 200, response.text
        return Scrape(response.text)

    async def grown(self, before: Scrape, name: str, by: float, **labels: str) -> Scrape:
        """Scrape until ``name`` (summed over the series matching ``labels``) is ``by`` more than in ``before``.

        A request is recorded as its last byte leaves, which the client may see a moment earlier; so
        this waits (bounded) for the figure instead of reading it once, then insists on it exactly."""
        scrape = await self.grown_at_least(before, name, by, **labels)
        found, expected = scrape.value(name, **labels), before.value(name, **labels) + by
        assert found == expected, f"{name}{labels}: {found}, expected {expected}"
        return scrape

    async def grown_at_least(self, before: Scrape, name: str, by: float, **labels: str) -> Scrape:
        """As :meth:`grown`, for a figure that may go on growing meanwhile: at least ``by`` more."""
        expected = before.value(name, **labels) + by
        scrape = await self.scrape()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SAFETY_S):
                while scrape.value(name, **labels) < expected:
                    scrape = await self.scrape()  # each scrape is a round trip: the gateway gets to run
        found = scrape.value(name, **labels)
        assert found >= expected, f"{name}{labels}: {found}, expected at least {expected}"
        return scrape


@contextlib.asynccontextmanager
async def serve_gateway(
    config: TurnoutConfig,
    config_path: Path | None = None,
    *,
    resolver: Resolver | None = None,
    placement: Placement | None = None,
) -> AsyncIterator[Gateway]:
    """The gateway as ``turnout serve`` runs it, on a free loopback port of this event loop (``config_path``:
    the file it was read from, which a reload reads again; ``resolver``: the DNS answers its replica
    discovery gets; ``placement``: another way to choose replicas).

    Its lifespan freezes the start-up heap (``gc.freeze``) and takes SIGHUP; both are undone when it
    stops, so gateways can be started and stopped many times in one test process."""
    sighup = signal.getsignal(signal.SIGHUP)
    try:
        app = create_asgi_app(config, config_path, resolver=resolver, placement=placement)
        async with _serving(app) as url, Gateway.connected(url, config) as gateway:
            yield gateway
    finally:
        gc.unfreeze()
        if signal.getsignal(signal.SIGHUP) != sighup:
            signal.signal(signal.SIGHUP, sighup)


# -- configuration ------------------------------------------------------------------------------------


def write_adapter(directory: Path, *, rank: int = 4, base: str = BASE, peft_type: str = "LORA") -> Path:
    """A minimal adapter directory the gateway's validation accepts (unless told otherwise): its
    ``adapter_config.json`` and a safetensors file whose header holds one rank-``rank`` LoRA pair."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": peft_type,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": base,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    hidden = 16
    size = rank * hidden * 4
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    header = {
        f"{prefix}.lora_A.weight": {"dtype": "F32", "shape": [rank, hidden], "data_offsets": [0, size]},
        f"{prefix}.lora_B.weight": {"dtype": "F32", "shape": [hidden, rank], "data_offsets": [size, 2 * size]},
    }
    raw = json.dumps(header).encode()
    (directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(2 * size))
    return directory


def gateway_config(
    upstream_url: str | Sequence[str] | None,
    adapter_dir: Path,
    adapters: Iterable[str] = (),
    *,
    vllm: Mapping[str, Any] | None = None,
    paths: Mapping[str, Path] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **sections: Any,
) -> TurnoutConfig:
    """A validated configuration in front of ``upstream_url`` (several: ``vllm.replicas``; None: the ``vllm``
    mapping says where, with ``discovery``): ``adapters`` share ``adapter_dir`` (the upstream tells them apart
    by name), ``paths`` give others their own directory, ``options`` add keys to adapters (``pinned``...) or
    declare others (``{"store": NAME}``), ``vllm`` adds to the vllm section, and ``sections`` are further
    top-level sections as the YAML file would hold them.

    ``TURNOUT_*`` variables of the environment running the tests are not applied: these configurations
    are the whole truth of what each test runs."""
    declared = {name: {"path": str(adapter_dir)} for name in adapters}
    declared.update({name: {"path": str(path)} for name, path in (paths or {}).items()})
    for name, extra in (options or {}).items():
        declared[name] = {**declared.get(name, {}), **extra}  # a name only here: {"store": ...} and the like
    where: dict[str, Any] = {}
    if isinstance(upstream_url, str):
        where["url"] = upstream_url
    elif upstream_url is not None:
        where["replicas"] = list(upstream_url)
    data: dict[str, Any] = {
        "vllm": {**where, "model": BASE, "max_lora_rank": MAX_RANK, **(vllm or {})},
        "adapters": declared,
        **sections,
    }
    with _without_turnout_environment():
        return TurnoutConfig(**data)


@contextlib.contextmanager
def _without_turnout_environment() -> Iterator[None]:
    saved = {key: value for key, value in os.environ.items() if key.upper().startswith("TURNOUT_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


# -- reading what the gateway said ------------------------------------------------------------------


class Scrape:
    """One ``GET /metrics`` answer, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(ls.items())): v for n, ls, v in self.samples if n == name}


def events(stream: bytes) -> list[bytes]:
    """The SSE events of a stream body, without their separators."""
    return [event for event in stream.split(b"\n\n") if event]


def event_data(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    return json.loads(event[len(b"data: ") :])


def assert_envelope(
    response: httpx.Response, status: int, code: str | None, *, param: str | None = None
) -> dict[str, Any]:
    """The response is the OpenAI error envelope with this status and code (and ``param``, when given)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert response.headers.get("x-request-id"), response.headers
    return error


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_exchange(port: int, head: bytes, parts: Iterable[bytes] = ()) -> RawResponse:
    """Send a hand-written HTTP/1.1 request (``head`` ends with the blank line) and read the whole answer;
    for bodies no well-behaved client would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in parts:
            writer.write(part)
        await writer.drain()
        async with asyncio.timeout(SAFETY_S):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding") == "chunked":
                body = bytearray()
                while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
                    body += await reader.readexactly(size)
                    await reader.readline()
            else:
                body = bytearray(await reader.readexactly(int(headers.get("content-length", "0"))))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return RawResponse(int(status_line.split()[1]), headers, bytes(body))


async def read_all(stream: AsyncIterable[Any], into: list[Any]) -> None:
    """Read ``stream`` to its end into ``into``, so what arrived before a failure part-way is kept."""
    async for item in stream:
        into.append(item)


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8, **extra}


def completion_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "Once upon a time", "max_tokens": 8, **extra}


def responses_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "input": "Say something.", "max_output_tokens": 8, **extra}


def named_event(event: bytes) -> tuple[str, Any]:
    """A Responses stream event (without its separator): its ``event:`` name and its data."""
    head, _, data = event.partition(b"\n")
    assert head.startswith(b"event: "), event
    return head[len(b"event: ") :].decode(), event_data(data)
