"""Finding replicas by DNS: every address a name resolves to is a replica (a Kubernetes headless Service).

The resolver is a seam: the system's (``getaddrinfo``, so ``/etc/hosts`` and the cluster's DNS both work)
unless another is given to :func:`gateway.app.create_asgi_app`, as tests do to change the answer at will.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Protocol


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to now; raises ``OSError`` when it cannot be resolved."""
        ...


class SystemResolver:
    """The operating system's resolver, off the event loop (asyncio runs ``getaddrinfo`` in a thread)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})


def address_url(scheme: str, address: str, port: int) -> str:
    """The base URL of the replica at ``address`` (IPv6 in brackets)."""
    try:
        if ipaddress.ip_address(address).version == 6:
            address = f"[{address}]"
    except ValueError:
        pass  # a name, not an address
    return f"{scheme}://{address}:{port}"
