"""Starting, pinning, checking and stopping the processes the overhead benchmark measures.

Each server is a fresh process in its own session, pinned to one core before it runs (the upstream and
the load generator on core 0, every gateway on core 1), ready when its health URL answers 200 (polled
against a deadline), stopped with SIGTERM to its process group, then SIGKILL.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODEL = "bench-model"
UPSTREAM_CORE = 0
GATEWAY_CORE = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin(core: int) -> None:
    """Pin the calling process (and so everything it starts) to one core, where the machine has it."""
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNOUT_", "LITELLM_", "DATABASE_URL"))}
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra}


@dataclass
class Server:
    """One process to benchmark: how to start it, where it answers, and what a client must send it."""

    name: str
    argv: list[str]
    port: int
    core: int
    workdir: Path
    env: dict[str, str] = field(default_factory=clean_env)
    health_path: str = "/health"
    headers: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        core = self.core
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=lambda: pin(core),
            )

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)  # polling for start-up against the deadline, not a timing
        raise RuntimeError(f"{self.name} did not answer {self.health_path} in time:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)

    def rss_mb(self) -> float:
        """Resident memory of the process and every process it started (VmRSS), in MB."""
        assert self.process is not None
        return sum(vm_rss_kb(pid) for pid in process_tree(self.process.pid)) / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the process and every process it started."""
        assert self.process is not None
        return sum(cpu_seconds(pid) for pid in process_tree(self.process.pid))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def vm_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def busy_seconds() -> float:
    """CPU time every core of the machine spent busy (not idle or waiting for I/O) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def upstream(workdir: Path, chunks: int, gap_ms: float) -> Server:
    port = free_port()
    argv = [sys.executable, str(HERE / "upstream.py"), "--port", str(port), "--model", MODEL]
    argv += ["--chunks", str(chunks), "--gap-ms", str(gap_ms)]
    return Server("direct", argv, port, UPSTREAM_CORE, workdir)


def bare(workdir: Path, upstream_url: str) -> Server:
    port = free_port()
    argv = [sys.executable, str(HERE / "bare.py"), "--port", str(port), "--upstream", upstream_url]
    return Server("bare", argv, port, GATEWAY_CORE, workdir)


def turnout(workdir: Path, upstream_url: str, name: str = "turnout", **sections: Any) -> Server:
    """A Turnout gateway in front of ``upstream_url``; ``sections`` are added to its configuration."""
    port = free_port()
    config: dict[str, Any] = {"server": {"log_level": "warning"}, "vllm": {"url": upstream_url, "model": MODEL}}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, **sections}))
    python = REPO / ".venv" / "bin" / "python"
    argv = [str(python if python.exists() else sys.executable), "-m", "gateway", "serve"]
    argv += ["--config", str(path), "--port", str(port)]
    env = clean_env(PYTHONPATH=str(REPO))
    return Server(name, argv, port, GATEWAY_CORE, workdir, env=env)


def litellm(workdir: Path, upstream_url: str, executable: str) -> Server:
    """LiteLLM proxy as its own CLI starts it: one uvicorn worker, offline, no database, errors-only logs."""
    port = free_port()
    key = "sk-" + secrets.token_hex(16)
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream_url + "/v1", "api_key": "dummy"},
            }
        ],
        "litellm_settings": {"telemetry": False, "turn_off_message_logging": True},
        "general_settings": {"disable_spend_logs": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [executable, "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_MASTER_KEY=key)
    return Server(
        "litellm",
        argv,
        port,
        GATEWAY_CORE,
        workdir,
        env=env,
        health_path="/health/liveliness",
        headers={"Authorization": f"Bearer {key}"},
    )


def litellm_executable() -> tuple[str | None, str]:
    """The cached LiteLLM proxy venv's ``litellm`` (built on first use), or None and why not."""
    try:
        done = subprocess.run(
            ["bash", str(HERE / "litellm-env.sh")], capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"its venv could not be built: {exc}"
    out = done.stdout.strip().splitlines()
    if done.returncode != 0 or not out or not Path(out[-1]).exists():
        err = done.stderr.strip().splitlines() or ["no output"]
        errors = [line.removeprefix("ERROR: ") for line in err if line.startswith("ERROR")]
        return None, f"its venv could not be built: {(errors or err)[-1]}"
    return out[-1], ""
