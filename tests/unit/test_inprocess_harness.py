"""The in-process harness leaves the test process as it found it: gateways come and go many times in one
session, so none may keep pytest's signals, a frozen heap or a server task behind."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path

from tests.support.faulty_upstream import BASE
from tests.support.inprocess import chat_body, gateway_config, serve_gateway, serve_upstream, write_adapter

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def servers() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("uvicorn-")]


async def test_gateways_started_and_stopped_leave_signals_gc_and_tasks_as_they_were(tmp_path: Path) -> None:
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    frozen = gc.get_freeze_count()
    running = servers()
    async with serve_upstream() as upstream:
        config = gateway_config(upstream.url, write_adapter(tmp_path / "lora"), ["formal"])
        for _ in range(2):  # a second gateway on the same loop starts as cleanly as the first
            async with serve_gateway(config) as gateway:
                assert signal.getsignal(signal.SIGINT) == handlers[signal.SIGINT]  # Ctrl-C still stops pytest
                assert signal.getsignal(signal.SIGTERM) == handlers[signal.SIGTERM]
                assert gc.get_freeze_count() > frozen  # the gateway froze its start-up heap, as it does in service
                response = await gateway.http.post("/v1/chat/completions", json=chat_body(BASE))
                assert response.status_code == 200
            assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers
            assert gc.get_freeze_count() == frozen
        assert len(servers()) == len(running) + 1  # the upstream's alone
    assert servers() == running
