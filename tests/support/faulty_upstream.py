"""A fault-injecting OpenAI-compatible upstream: the benchmark's fast app with vLLM's adapter bookkeeping.

The benchmark's upstream (``bench/overhead/upstream.py``) answers completions the way vLLM writes them;
:class:`FaultyUpstream` wraps it, keeps vLLM's adapter semantics (load, unload, a 404 for an adapter it
does not hold, ``/v1/models`` listing the loaded ones), answers ``POST /v1/responses`` itself the way
vLLM's Responses API does (:class:`ResponsesAnswers`; or, built with ``responses=False``, with the
web framework's 404 of a server that has no such endpoint) and misbehaves by the request's ``model``. The
gateway forwards an adapter's own name as ``model``, so each fault is an adapter named after it. Every
completion request is recorded with what was answered, and tests await what the upstream saw through
:meth:`FaultyUpstream.until` rather than by sleeping.

As one replica of several it also fails as a whole server does: ``stall`` (answers nothing, until the
client hangs up), :meth:`FaultyUpstream.crash` (answers being held drop their connections), ``refuse_loads``
(this server cannot load those adapters), ``hold_loads`` (loads wait for :meth:`FaultyUpstream.release_loads`)
and ``lru`` (vLLM's own eviction: past that many adapters, the least recently used one is forgotten).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mypy checks bench/overhead as a directory of scripts, where this module is ``upstream``
    from upstream import CONTENT_MARK, Message, Receive, Scope, Send, Upstream, read_body
else:
    from bench.overhead.upstream import CONTENT_MARK, Message, Receive, Scope, Send, Upstream, read_body

BASE = "house-base"  # the name the upstream serves its base model under (vllm.model)
CHUNKS = 4  # content chunks per upstream stream
MAX_RANK = 8
SAFETY_S = 5.0  # bound on any wait for an event; a test that hits it has failed, not slowed down

# Faults, by the model name the upstream is asked for (declare adapters with these names).
SILENT = "fail-silent"  # never answers; waits for the gateway to hang up
MIDSTREAM = "fail-midstream"  # drops the connection mid-answer (a stream: after its first events)
INBAND = "fail-inband"  # sends vLLM's in-band error event after the first stream events, then [DONE]
SLOW = "slow"  # holds its answer (a stream: after the first events) until released or the client leaves
SLOW_START = "slow-start"  # holds even a stream's headers until released or the client leaves
LOAD_FAILS = "fail-load"  # vLLM cannot load this adapter (500 on load_lora_adapter)
NO_USAGE = "no-usage"  # a Responses answer (and stream) whose usage is null
_STATUS_FAULT = re.compile(r"^fail-(\d{3})$")  # fail-500, fail-400, fail-503, fail-429...

RESPONSES = "/v1/responses"
_COMPLETIONS = ("/v1/chat/completions", "/v1/completions", RESPONSES)
_JSON = [(b"content-type", b"application/json")]


def fail(status: int) -> str:
    """The model name the upstream answers with ``status`` and an OpenAI error envelope."""
    return f"fail-{status}"


@dataclass
class Seen:
    """One completion request as the upstream received it, and what it answered."""

    path: str
    model: str
    body: bytes
    data: dict[str, Any]
    request_id: str | None
    sent: bytearray = field(default_factory=bytearray)
    disconnected: bool = False  # the gateway hung up before the answer was complete

    @property
    def stream(self) -> bool:
        return self.data.get("stream") is True


class _Stop(Exception):
    """Ends the bench app's handler early; the wrapper has answered (or the client has gone)."""


class _DropConnection(Exception):
    """Raised out of the app after the response started, so uvicorn closes the connection mid-body."""


class _QuietDrop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DropConnection))


@contextlib.contextmanager
def quiet_drops() -> Iterator[None]:
    """Keep uvicorn from logging the tracebacks of connections dropped on purpose."""
    quiet = _QuietDrop()
    errors = logging.getLogger("uvicorn.error")
    errors.addFilter(quiet)
    try:
        yield
    finally:
        errors.removeFilter(quiet)


class FaultyUpstream:
    """The bench upstream with vLLM's adapter bookkeeping, faults by model name, and a record of traffic."""

    def __init__(
        self, base: str = BASE, chunks: int = CHUNKS, *, served: tuple[str, ...] = (), responses: bool = True
    ) -> None:
        self.url = ""  # set while it is served
        self.base = base
        self.served = {base, *served}  # names the base model answers to (--served-model-name)
        self.responses = ResponsesAnswers(chunks) if responses else None
        self.inner = Upstream(base, chunks, 0.0)
        self.loaded: set[str] = set()
        self.requests: list[Seen] = []
        self.loads: list[str] = []
        self.load_paths: dict[str, str] = {}
        self.unloads: list[str] = []
        self.models_reads = 0
        self.stall = False  # hold every completion, headers included, until the client hangs up
        self.stall_models = False  # accept GET /v1/models and never answer it (a wedged server)
        self.refuse_loads: set[str] = set()  # adapters this server fails to load (500)
        self.hold_loads = False  # loads wait until release_loads()
        self.lru: int | None = None  # at most this many adapters; loading another forgets the least recently used
        self.evicted: list[str] = []  # adapters the lru forgot
        self._used: dict[str, int] = {}
        self._uses = 0
        self._loads_go = asyncio.Event()
        self._crashed = asyncio.Event()
        self._gates: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()

    # -- what tests use ---------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget what was seen and close every gate; adapters stay loaded, as on a running vLLM."""
        self.requests.clear()
        self.loads.clear()
        self.unloads.clear()
        self.models_reads = 0
        for gate in self._gates.values():
            gate.set()  # nothing stays held from an earlier test
        self._gates.clear()

    def release(self, model: str) -> None:
        """Let held answers for ``model`` go on (and later ones pass without holding)."""
        self._gate(model).set()
        self._note()

    def forget(self, *names: str) -> None:
        """What a vLLM restart does to runtime-loaded adapters (these, or all of them): they are gone."""
        if names:
            self.loaded.difference_update(names)
        else:
            self.loaded.clear()
        self._note()

    def release_loads(self) -> None:
        """Let held loads (``hold_loads``) finish, and later ones pass at once."""
        self.hold_loads = False
        self._loads_go.set()

    def crash(self) -> None:
        """The server dies mid-answer: every answer being held drops its connection (stop serving it too)."""
        self._crashed.set()
        self._note()

    def seen(self, model: str | None = None) -> list[Seen]:
        return [s for s in self.requests if model is None or s.model == model]

    async def until(self, predicate: Callable[[], bool], what: str, bound_s: float = SAFETY_S) -> None:
        """Wait for ``predicate`` to hold, re-checking whenever the upstream records something."""
        try:
            async with asyncio.timeout(bound_s):
                while True:
                    self._changed.clear()
                    if predicate():
                        return
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"the upstream never saw {what} (within {bound_s} s)") from None

    # -- the ASGI app -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in _COMPLETIONS:
            await self._completion(scope, receive, send)
        elif method == "POST" and path == "/v1/load_lora_adapter":
            await self._load(await _json_body(receive), send)
        elif method == "POST" and path == "/v1/unload_lora_adapter":
            await self._unload(await _json_body(receive), send)
        elif method == "GET" and path == "/v1/models":
            self.models_reads += 1
            if self.stall_models:
                await _disconnect(receive)
                return
            await _respond(send, 200, self._models())
        else:
            await self.inner(scope, receive, send)
        self._note()

    def _models(self) -> bytes:
        listing = json.loads(self.inner.models)
        listing["data"] += [
            {"id": name, "object": "model", "owned_by": "vllm", "root": name, "parent": self.base}
            for name in sorted(self.loaded)
        ]
        return json.dumps(listing).encode()

    async def _load(self, payload: dict[str, Any], send: Send) -> None:
        name = str(payload.get("lora_name"))
        self.loads.append(name)
        self.load_paths[name] = str(payload.get("lora_path"))
        self._note()
        if self.hold_loads:
            await self._loads_go.wait()
        if name.startswith(LOAD_FAILS) or name in self.refuse_loads:
            await _respond(send, 500, _envelope("loading the adapter crashed", "InternalServerError", 500))
        elif name in self.loaded:
            message = f"The lora adapter '{name}' has already been loaded."
            await _respond(send, 400, _envelope(message, "BadRequestError", 400))
        else:
            self.loaded.add(name)
            self._use(name)
            if self.lru is not None and len(self.loaded) > self.lru:
                oldest = min(self.loaded - {name}, key=lambda n: self._used.get(n, 0))
                self.loaded.discard(oldest)
                self.evicted.append(oldest)
            await _respond(send, 200, f"Success: LoRA adapter '{name}' added successfully.".encode(), _TEXT)

    def _use(self, name: str) -> None:
        self._uses += 1
        self._used[name] = self._uses

    async def _unload(self, payload: dict[str, Any], send: Send) -> None:
        name = str(payload.get("lora_name"))
        self.unloads.append(name)
        if name not in self.loaded:
            await _respond(send, 404, _envelope(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404))
        else:
            self.loaded.discard(name)
            await _respond(send, 200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), _TEXT)

    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        data = json.loads(body)
        model = str(data.get("model"))
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id")
        seen = Seen(scope["path"], model, body, data, request_id.decode() if request_id is not None else None)
        self.requests.append(seen)
        self._note()

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.body":
                seen.sent += message.get("body", b"")
            await send(message)

        if scope["path"] == RESPONSES and self.responses is None:
            await _respond(recording, 404, b'{"detail":"Not Found"}')  # an older vLLM: no such endpoint
            return
        if model not in self.served and model not in self.loaded:
            message = f"The model `{model}` does not exist."
            await _respond(recording, 404, _envelope(message, "NotFoundError", 404, param="model"))
            return
        if model in self.loaded:
            self._use(model)
        status = _STATUS_FAULT.match(model)
        if status is not None:
            code = int(status.group(1))
            param = "max_tokens" if 400 <= code < 500 else None
            await _respond(recording, code, _envelope(f"the upstream fails with {code}", "UpstreamFault", code, param))
            return

        # What the bench app sends passes through ``forward``, which holds, cuts or corrupts it by fault.
        forward: Send = recording
        if model == SILENT or self.stall:
            forward = self._holding(seen, receive, recording, model, after=0, gated=False)
        elif model.startswith(SLOW_START):
            forward = self._holding(seen, receive, recording, model, after=0, gated=True)
        elif model.startswith(SLOW):
            forward = self._holding(seen, receive, recording, model, after=2 if seen.stream else 0, gated=True)
        elif model == MIDSTREAM:
            forward = _cutting(recording, after=2 if seen.stream else 1)
        elif model == INBAND and seen.stream:
            forward = _erring(recording, after=2, responses=scope["path"] == RESPONSES)
        replay = _replaying(body, receive)
        with contextlib.suppress(_Stop):
            if scope["path"] == RESPONSES:
                assert self.responses is not None
                await self.responses.answer(data, forward)
            else:
                await self.inner(scope, replay, forward)

    def _holding(self, seen: Seen, receive: Receive, send: Send, model: str, *, after: int, gated: bool) -> Send:
        """A ``send`` that forwards ``after`` messages, then waits for the gate or the client to leave."""
        count = 0

        async def held(message: Message) -> None:
            nonlocal count
            if count == after:
                left = await self._hold(receive, self._gate(model) if gated else None)
                if left:
                    seen.disconnected = True
                    self._note()
                    raise _Stop
            count += 1
            await send(message)

        return held

    async def _hold(self, receive: Receive, gate: asyncio.Event | None) -> bool:
        """True if the client disconnected before ``gate`` opened (with no gate, wait for that)."""
        gone = asyncio.ensure_future(_disconnect(receive))
        crashed = asyncio.ensure_future(self._crashed.wait())
        waits: set[asyncio.Future[Any]] = {gone, crashed}
        if gate is not None:
            waits.add(asyncio.ensure_future(gate.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if crashed.done() and not crashed.cancelled():
            raise _DropConnection("the server crashed")
        return gone.done() and not gone.cancelled()

    def _gate(self, model: str) -> asyncio.Event:
        return self._gates.setdefault(model, asyncio.Event())

    def _note(self) -> None:
        self._changed.set()


_TEXT = [(b"content-type", b"text/plain")]


def _envelope(message: str, kind: str, code: int, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json_body(receive: Receive) -> dict[str, Any]:
    parsed = json.loads(await read_body(receive) or b"{}")
    return parsed if isinstance(parsed, dict) else {}


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the bench app once, then the real messages."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _cutting(send: Send, *, after: int) -> Send:
    count = 0

    async def cut(message: Message) -> None:
        nonlocal count
        if count == after:
            raise _DropConnection("the upstream drops the connection mid-stream")
        count += 1
        await send(message)

    return cut


def _erring(send: Send, *, after: int, responses: bool = False) -> Send:
    count = 0

    async def err(message: Message) -> None:
        nonlocal count
        if count == after:
            if responses:  # the Responses API's own error event, and no more
                said = {"type": "error", "code": "server_error", "message": "the engine failed mid-generation"}
                event = b"event: error\ndata: " + json.dumps({**said, "param": None, "sequence_number": 2}).encode()
                await send({"type": "http.response.body", "body": event + b"\n\n", "more_body": False})
                raise _Stop
            event = b"data: " + _envelope("the engine failed mid-generation", "InternalServerError", 500) + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            raise _Stop
        count += 1
        await send(message)

    return err


class ResponsesAnswers:
    """``POST /v1/responses`` answered as vLLM's Responses API writes it: a whole response, or its named
    events (created and in progress; the message and its part added; one delta per chunk; the text, part
    and message done; completed, with usage), each group in one write so faults cut between them."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    def texts(self) -> list[str]:
        return [f"{CONTENT_MARK}-{i} " for i in range(self.chunks)]

    def _response(self, data: dict[str, Any], status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        return {
            "id": "resp_faulty",
            "object": "response",
            "created_at": 1700000000,
            "model": data.get("model"),
            "instructions": data.get("instructions"),
            "max_output_tokens": data.get("max_output_tokens"),
            "output": output,
            "status": status,
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "usage": usage,
        }

    def _usage(self, model: str) -> dict[str, Any] | None:
        if model == NO_USAGE:
            return None
        details = {"input_tokens_details": {"cached_tokens": 4}, "output_tokens_details": {"reasoning_tokens": 0}}
        return {"input_tokens": 12, "output_tokens": self.chunks, "total_tokens": 12 + self.chunks, **details}

    @staticmethod
    def _message(text: str, status: str = "completed") -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if text:
            content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": None})
        return {"id": "msg_faulty", "type": "message", "role": "assistant", "status": status, "content": content}

    async def answer(self, data: dict[str, Any], send: Send) -> None:
        model, text = str(data.get("model")), "".join(self.texts())
        done = self._response(data, "completed", [self._message(text)], self._usage(model))
        if data.get("stream") is not True:
            await _respond(send, 200, json.dumps(done).encode())
            return
        started = self._response(data, "in_progress", [], None)
        where = {"item_id": "msg_faulty", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": []}
        groups: list[list[tuple[str, dict[str, Any]]]] = [
            [("response.created", {"response": started}), ("response.in_progress", {"response": started})],
            [
                ("response.output_item.added", {"output_index": 0, "item": self._message("", "in_progress")}),
                ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
            ],
            *[[("response.output_text.delta", {**where, "delta": piece, "logprobs": []})] for piece in self.texts()],
            [
                ("response.output_text.done", {**where, "text": text, "logprobs": []}),
                ("response.content_part.done", {**where, "part": part}),
                ("response.output_item.done", {"output_index": 0, "item": self._message(text)}),
                ("response.completed", {"response": done}),
            ],
        ]
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        sequence = 0
        for number, group in enumerate(groups):
            body = b""
            for kind, fields in group:
                payload = json.dumps({**fields, "sequence_number": sequence, "type": kind})
                body += f"event: {kind}\ndata: {payload}\n\n".encode()
                sequence += 1
            await send({"type": "http.response.body", "body": body, "more_body": number < len(groups) - 1})


_SSE = [(b"content-type", b"text/event-stream")]
