"""The interface every backend offers, and the vLLM backend (base model and LoRA adapters).

A backend opens the answer for one target and returns it unread, so the service can stream it or read
it whole. ``close`` on the returned handle must run exactly once, whatever happens; it releases what
the backend held for the request (an adapter lease, the connection).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from gateway.accounting.ledger import Ledger
from gateway.adapters.manager import Lease
from gateway.dispatch.shaping import shape_body
from gateway.errors import TurnoutError, UpstreamModelMissing
from gateway.fleet.fleet import Fleet
from gateway.fleet.replica import Replica
from gateway.protocol.requests import PATHS, Endpoint
from routing import RequestFeatures, Target, TargetKind

REPLICA_HEADER = "x-turnout-replica"
VERSION_HEADER = "x-turnout-adapter-version"


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
    """Serves the base model and its adapters from the fleet's vLLM replicas.

    The fleet names the replica; a request it could not be sent to (the replica is down, silent or
    overloaded, or cannot load the adapter) is tried on another before its first byte, and every answer
    says which replica gave it (``x-turnout-replica``). An adapter served from the adapter store is sent under
    its version's vLLM name, and its answer says which version (``x-turnout-adapter-version``)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def open(self, target: Target, call: Call) -> Opened:
        call.ledger.added_to_prompt(target.system_prompt)
        return await self.open_shaped(target, call, partial(shape_body, call.raw, call.data, call.endpoint, target))

    async def open_shaped(self, target: Target, call: Call, shape: Callable[[str], bytes]) -> Opened:
        """Send for ``call`` the body ``shape`` makes for the name vLLM knows the model by: the target's name,
        or the adapter version's, known only once the adapter is held (a store name may move meanwhile)."""
        fleet = self.fleet
        adapter = target.name if target.kind is TargetKind.ADAPTER else None
        replica = fleet.pick(adapter)
        if replica is None:
            raise fleet.none_left(adapter)
        path, request_id, ledger = call.path, call.features.request_id or None, call.ledger
        tried: list[Replica] | None = None  # made only when a replica fails: the hot path allocates nothing
        body, shaped_for = (shape(target.name), target.name) if adapter is None else (b"", "")
        while True:
            upstream = replica.upstream
            replica.hold()
            lease: Lease | None = None
            try:
                if adapter is None:
                    with ledger.sending():  # a non-streaming answer's headers come only once it is generated
                        response = await upstream.open(path, body, model=target.name, request_id=request_id)
                else:
                    with ledger.waiting_elsewhere():
                        lease = await replica.adapters.acquire(adapter)  # a load, when the adapter is not resident
                    if lease.lora != shaped_for:
                        body, shaped_for = shape(lease.lora), lease.lora
                    with ledger.sending():
                        try:
                            response = await upstream.open(path, body, model=adapter, request_id=request_id)
                        except UpstreamModelMissing:
                            # vLLM forgot the adapter (it restarted, or its LRU evicted it): load it again and
                            # send the request once more; whatever else it forgot, the fleet repairs.
                            lease.release()
                            lease = None
                            fleet.forgotten(replica, await replica.adapters.heal(adapter))
                            lease = await replica.adapters.acquire(adapter)
                            if lease.lora != shaped_for:
                                body, shaped_for = shape(lease.lora), lease.lora
                            response = await upstream.open(path, body, model=adapter, request_id=request_id)
            except BaseException as exc:
                if lease is not None:
                    lease.release()
                replica.release()
                if not isinstance(exc, TurnoutError):
                    raise
                # Nothing reached the client yet: another replica may take it (this one is down, silent or
                # overloaded, or could not load the adapter).
                if fleet.failed(replica, exc, adapter):
                    tried = [*(tried or ()), replica]
                    following = fleet.pick(adapter, tried)
                    if following is not None:
                        replica = following
                        continue
                exc.add_headers({REPLICA_HEADER: replica.name})
                raise
            if replica.failures or not replica.healthy:
                fleet.answered(replica)
            if lease is None:
                return Opened(response, replica.release, headers={REPLICA_HEADER: replica.name})
            lease.then = replica.release
            headers = {REPLICA_HEADER: replica.name}
            if lease.version is not None:
                headers[VERSION_HEADER] = lease.version
            return Opened(response, lease.release, headers=headers)
