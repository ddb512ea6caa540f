"""One vLLM replica as the fleet sees it: its address, its adapters, its health and its load."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.adapters.manager import AdapterManager
from gateway.upstream.client import Upstream


def replica_name(url: str) -> str:
    """How a replica is named in metrics, headers and logs: its URL without the scheme (``10.0.3.7:8000``)."""
    return url.partition("://")[2] or url


@dataclass(eq=False, slots=True)
class Replica:
    """A replica's state. Only the fleet changes it (the event loop's one thread: no locks)."""

    url: str
    name: str
    upstream: Upstream
    adapters: AdapterManager
    healthy: bool = True  # chosen for requests; False once ejected, until a probe succeeds
    draining: bool = False  # left the discovered set: no new requests, the ones in flight finish
    failures: int = 0  # consecutive failures of probes and requests
    ejections: int = 0
    in_flight: int = 0  # requests this gateway has open on it (streams until their last byte)
    last_error: str = ""
    outcomes: deque[bool] = field(default_factory=deque)  # its last requests: True failed (a window, see Fleet)
    drained: Callable[[Replica], None] | None = None  # called when a draining replica's last request ends

    def hold(self) -> None:
        """A request is sent here: it counts in the load until :meth:`release`."""
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.draining and self.in_flight == 0 and self.drained is not None:
            self.drained(self)

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining

    def describe(self) -> dict[str, object]:
        """The replica for ``/admin/adapters``."""
        return {
            "replica": self.name,
            "url": self.url,
            "health": "draining" if self.draining else "healthy" if self.healthy else "ejected",
            "healthy": self.healthy,
            "draining": self.draining,
            "in_flight": self.in_flight,
            "consecutive_failures": self.failures,
            "ejections": self.ejections,
            "last_error": self.last_error or None,
            "adapters": self.adapters.snapshot(),
        }
