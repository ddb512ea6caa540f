"""The interface every backend offers, and the vLLM backend (base model and LoRA adapters).

A backend opens the answer for one target and returns it unread, so the service can stream it or read
it whole. ``close`` on the returned handle must run exactly once, whatever happens; it releases what
the backend held for the request (an adapter lease, the connection).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.accounting.ledger import Ledger
from gateway.adapters.manager import AdapterManager
from gateway.dispatch.shaping import shape_body
from gateway.errors import UpstreamModelMissing
from gateway.protocol.requests import PATHS, Endpoint
from gateway.upstream.client import Upstream
from routing import RequestFeatures, Target, TargetKind


class Answer(Protocol):
    """An answer not read yet: from an upstream (``UpstreamResponse``) or made here (``StaticAnswer``)."""

    @property
    def status(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the backends see it: the client's bytes, parsed body and routing features, and the
    ledger where backends note the time they spend waiting on others and what they used."""

    endpoint: Endpoint
    raw: bytes
    data: dict[str, Any]
    features: RequestFeatures
    ledger: Ledger

    @property
    def path(self) -> str:
        return PATHS[self.endpoint]


@dataclass(slots=True)
class Opened:
    """An answer with status 2xx, not read yet, and what to release when done with it.

    ``citations`` (RAG) are added to the answer on its way out; ``headers`` go on the response."""

    response: Answer
    on_close: Callable[[], None] | None = None
    citations: list[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def cited(self, citations: list[dict[str, Any]], headers: Mapping[str, str]) -> Opened:
        """This answer, with the ``citations`` it is based on and the response ``headers`` that say so."""
        self.citations = citations
        self.headers.update(headers)
        return self

    def close(self) -> None:
        self.response.close()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()


class PassToNextRule(Exception):
    """A target has nothing to say (retrieval found nothing) and its rule lets the next rule decide;
    ``headers`` say so on the answer the next rule gives."""

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.headers = dict(headers or {})


class Backend(Protocol):
    async def open(self, target: Target, call: Call) -> Opened: ...


class VllmBackend:
    """Serves the base model and its adapters from one vLLM server."""

    def __init__(self, upstream: Upstream, adapters: AdapterManager) -> None:
        self.upstream = upstream
        self.adapters = adapters

    async def open(self, target: Target, call: Call) -> Opened:
        body = shape_body(call.raw, call.data, call.endpoint, target, target.name)
        call.ledger.added_to_prompt(target.system_prompt)
        return await self.open_body(target, call, body)

    async def open_body(self, target: Target, call: Call, body: bytes) -> Opened:
        """Send ``body`` (already shaped for ``target``) for ``call``."""
        path, request_id, ledger = call.path, call.features.request_id or None, call.ledger
        if target.kind is not TargetKind.ADAPTER:
            with ledger.sending():  # a non-streaming answer's headers come only once it is generated
                return Opened(await self.upstream.open(path, body, model=target.name, request_id=request_id))
        with ledger.waiting_elsewhere():
            lease = await self.adapters.acquire(target.name)  # a load, when the adapter is not resident
        try:
            with ledger.sending():
                try:
                    response = await self.upstream.open(path, body, model=target.name, request_id=request_id)
                except UpstreamModelMissing:
                    # vLLM forgot the adapter (it restarted): load it again and send the request once more.
                    lease.release()
                    await self.adapters.heal(target.name)
                    lease = await self.adapters.acquire(target.name)
                    response = await self.upstream.open(path, body, model=target.name, request_id=request_id)
        except BaseException:
            lease.release()
            raise
        return Opened(response, lease.release)
