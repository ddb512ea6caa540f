"""Waiting for something a real server does on its own time (vLLM aborting a request, a gateway applying a
reload), by a deadline rather than a count of polls: a busy 2-core machine slows the server, not the truth."""

from __future__ import annotations

import time
from collections.abc import Callable

REAL_SERVER_BOUND_S = 60.0  # a test that reaches it has failed, not slowed down


def until(
    happened: Callable[[], bool],
    pace: Callable[[], object],
    failure: Callable[[], str],
    bound_s: float = REAL_SERVER_BOUND_S,
) -> None:
    """Poll ``happened``, calling ``pace`` (a real round trip) between polls; fail with ``failure()`` past
    ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while not happened():
        assert time.monotonic() < deadline, failure()
        pace()
