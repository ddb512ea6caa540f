"""``make demo`` keeps the stack alive as Kubernetes would: a vLLM that exits is started again (and waited
for) while the gateway keeps running; one that runs is left alone. (The real restart of a real vLLM, and the
gateway healing after it, are tested end to end in tests/e2e/test_upstream_failures.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import demo
import pytest


class Server:
    def __init__(self, running: bool) -> None:
        self.running = running
        self.port, self.pid, self.url = 8000, 4321, "http://127.0.0.1:8000"
        self.log_path = Path("/nonexistent/vllm.log")
        self.calls: list[str] = []

    def is_running(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.calls.append("stop")

    def start(self) -> None:
        self.calls.append("start")
        self.running, self.pid = True, 9876

    def wait_ready(self, timeout: float) -> float:
        self.calls.append("wait_ready")
        return 42.0


def test_a_vllm_that_exited_is_started_again_and_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "LOG_DIR", tmp_path)
    server, said = Server(running=False), list[str]()
    assert demo.restart_if_gone(server, said.append) is True  # type: ignore[arg-type]
    assert server.calls == ["stop", "start", "wait_ready"]
    assert (tmp_path / "vllm-8000.pid").read_text() == "9876\n"  # the new process group, for the banner's kill
    assert "starting it again" in said[0]
    assert "back after 42 s" in said[1]


def test_a_running_vllm_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "LOG_DIR", tmp_path)
    server, said = Server(running=True), list[Any]()
    assert demo.restart_if_gone(server, said.append) is False  # type: ignore[arg-type]
    assert server.calls == []
    assert said == []
