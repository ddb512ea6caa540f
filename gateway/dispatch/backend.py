"""The interface every backend offers, and the vLLM backend (base model and LoRA adapters).

A backend opens the upstream answer for one target and returns it unread, so the service can stream it
or read it whole. ``close`` on the returned handle must run exactly once, whatever happens; it releases
what the backend held for the request (an adapter lease, the connection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.adapters.manager import AdapterManager
from gateway.errors import UpstreamModelMissing
from gateway.upstream.client import Upstream, UpstreamResponse
from routing import Target, TargetKind


@dataclass(slots=True)
class Opened:
    """An upstream answer with status 2xx, not read yet, and what to release when done with it."""

    response: UpstreamResponse
    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        self.response.close()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()


class Backend(Protocol):
    async def open(self, target: Target, path: str, body: bytes) -> Opened: ...


class VllmBackend:
    """Serves the base model and its adapters from one vLLM server."""

    def __init__(self, upstream: Upstream, adapters: AdapterManager) -> None:
        self.upstream = upstream
        self.adapters = adapters

    async def open(self, target: Target, path: str, body: bytes) -> Opened:
        if target.kind is not TargetKind.ADAPTER:
            return Opened(await self.upstream.open(path, body, model=target.name))
        lease = await self.adapters.acquire(target.name)
        try:
            try:
                response = await self.upstream.open(path, body, model=target.name)
            except UpstreamModelMissing:
                # vLLM forgot the adapter (it restarted): load it again and send the request once more.
                lease.release()
                await self.adapters.heal(target.name)
                lease = await self.adapters.acquire(target.name)
                response = await self.upstream.open(path, body, model=target.name)
        except BaseException:
            lease.release()
            raise
        return Opened(response, lease.release)
