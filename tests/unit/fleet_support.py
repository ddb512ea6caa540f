"""What the in-process fleet tests share: several fault-injecting upstreams as vLLM replicas, a DNS resolver
the test answers for, and reading the gateway's own view of its replicas (``/admin/adapters``, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tests.support.faulty_upstream import SAFETY_S, FaultyUpstream
from tests.support.inprocess import Gateway, serve_upstream

# Probes often enough that a test sees ejection, return and repair within a fraction of a second.
FAST_HEALTH = {"interval_s": 0.05, "timeout_s": 1.0, "eject_after": 2}
# Probes that never come during a test: what happens is the requests' doing alone.
NO_PROBES = {"interval_s": 3600, "timeout_s": 1.0, "eject_after": 3}


def name_of(upstream: FaultyUpstream) -> str:
    """The replica's name in headers, metrics and /admin/adapters: host:port."""
    return upstream.url.partition("://")[2]


@contextlib.asynccontextmanager
async def replicas(count: int) -> AsyncIterator[list[FaultyUpstream]]:
    """``count`` upstreams, each its own replica on a free loopback port."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_upstream()) for _ in range(count)]


def shared_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (loopback addresses), as replicas behind one DNS name share one."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


class AnsweringResolver:
    """A DNS resolver whose answer the test sets: a list of addresses, or None to fail as DNS does."""

    def __init__(self, name: str, addresses: list[str] | None) -> None:
        self.name = name
        self.addresses = addresses
        self.asked = 0

    async def resolve(self, host: str, port: int) -> list[str]:
        self.asked += 1
        if host != self.name or self.addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.addresses)


async def admin(gateway: Gateway) -> dict[str, Any]:
    response = await gateway.http.get("/admin/adapters")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def replica_row(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in state["replicas"] if r["replica"] == name), None)


def adapter_state(state: dict[str, Any], replica: str, adapter: str) -> str | None:
    row = replica_row(state, replica)
    if row is None:
        return None
    return next((a["state"] for a in row["adapters"] if a["name"] == adapter), None)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, bound_s: float = SAFETY_S) -> None:
    """Ask ``check`` again until it holds, against a deadline. Each check is a round trip to the gateway, which
    lets the gateway's background work run in between (as ``Gateway.grown`` does with scrapes)."""
    try:
        async with asyncio.timeout(bound_s):
            while not await check():
                pass
    except TimeoutError:
        raise AssertionError(f"{what}: not within {bound_s} s") from None


async def until_admin(gateway: Gateway, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The gateway's ``/admin/adapters`` once ``predicate`` holds for it."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal seen
        seen = await admin(gateway)
        return predicate(seen)

    await eventually(check, what)
    return seen
