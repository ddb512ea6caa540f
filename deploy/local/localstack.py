"""Run the local stack's real servers: vLLM on the CPU and its assets.

Standard library only, because this module is imported from environments that
must not carry torch or vLLM (the gateway's tests, the demo script). Heavy work
happens in the separate vLLM venv, reached through the shell scripts beside
this file:

- ``ensure_vllm_env()`` runs ``vllm-env.sh`` (builds or reuses the venv) and
  returns that venv's python;
- ``ensure_assets()`` runs ``assets.sh`` (builds or reuses the tiny model and
  LoRA adapters) and returns the assets directory;
- ``VllmServer`` starts ``vllm serve`` through ``vllm_launcher.py`` in its own
  process group, waits for ``/health`` and stops the whole group.

Every child is started with ``start_new_session=True`` so that stopping it
reaches vLLM's engine and worker processes too, not only the API server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "REPO_ROOT",
    "LocalStackError",
    "ProcessExitedError",
    "VllmServer",
    "ensure_assets",
    "ensure_vllm_env",
    "free_port",
    "http_get",
    "log_tail",
    "metric_total",
    "scrape_metrics",
    "start_process_group",
    "stop_process_group",
    "wait_http_ok",
]

HERE = Path(__file__).resolve().parent
REPO_ROOT: Path = HERE.parent.parent

#: Environment for every vLLM server this module starts. Runtime LoRA loading
#: is the feature the gateway drives; the offline flags make any attempt to
#: reach a model hub fail at once instead of hanging on a closed network.
VLLM_ENV: Mapping[str, str] = {
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # whole GiB; 1 is the smallest usable value
    "VLLM_TARGET_DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    # vLLM's default ("auto") pins the worker's OpenMP threads to one core and
    # reserves the rest for other processes; pin nothing, let the OS place them.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "PYTHONUNBUFFERED": "1",
}


class LocalStackError(RuntimeError):
    """A local server or asset could not be made ready."""


class ProcessExitedError(LocalStackError):
    """A child process exited while it was expected to keep running."""


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last lines of a log file, or a note that there is none."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return f"(no log at {path})"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _run_script(script: str) -> str:
    """Run a setup script; its progress shows on stderr, its answer is stdout's last line."""
    path = HERE / script
    result = subprocess.run(
        ["bash", str(path)],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LocalStackError(f"{path} failed with exit code {result.returncode}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise LocalStackError(f"{path} printed nothing on stdout")
    return lines[-1].strip()


def ensure_vllm_env() -> Path:
    """Build or reuse the vLLM venv; return its python interpreter."""
    python = Path(_run_script("vllm-env.sh"))
    if not python.exists():
        raise LocalStackError(f"vllm-env.sh reported {python}, which does not exist")
    return python


def ensure_assets() -> Path:
    """Build or reuse the tiny model and adapters; return the assets directory.

    The directory holds ``model/`` and ``adapters/{formal,terse,pirate,wide}``.
    """
    assets = Path(_run_script("assets.sh"))
    if not (assets / ".turnout-complete").exists():
        raise LocalStackError(f"assets.sh reported {assets}, which is incomplete")
    return assets


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET url; return (status, body), with HTTP error statuses returned, not raised."""
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape_metrics(base_url: str, timeout: float = 5.0) -> dict[str, float]:
    """Read a Prometheus ``/metrics`` page into {sample with labels: value}.

    Keys are the sample exactly as exposed, e.g.
    ``vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny-llama"}``.
    """
    status, body = http_get(f"{base_url}/metrics", timeout=timeout)
    if status != 200:
        raise LocalStackError(f"GET {base_url}/metrics answered {status}")
    samples: dict[str, float] = {}
    for line in body.decode("utf-8", errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            end = line.rindex("}") + 1
            key, rest = line[:end], line[end:].split()
        else:
            key, *rest = line.split()
        if rest:
            samples[key] = float(rest[0])
    return samples


def metric_total(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum the samples of one metric whose labels include every given label.

    ``metric_total(s, "vllm:request_success_total")`` counts finished requests
    of every reason; ``finished_reason="length"`` narrows it to one.
    """
    total = 0.0
    for key, value in samples.items():
        base, _, label_text = key.partition("{")
        if base != name:
            continue
        found = dict(_LABEL.findall(label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def start_process_group(
    cmd: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start cmd as the leader of a new process group, stdout and stderr to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("ab")
    try:
        header = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n"
        log.write(header.encode())
        log.flush()
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own descriptor


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process remains in the process group."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command: state ppid pgrp ...
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM the process group led by proc, wait up to timeout, then SIGKILL it.

    Waits for every member of the group, not just the leader: vLLM's engine
    core and workers hold memory and ports until they are gone. Returns the
    leader's exit code.
    """
    pgid = proc.pid  # leader of its own session, so pid == pgid
    deadline = time.monotonic() + timeout
    if proc.poll() is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not _group_alive(pgid):
            return proc.returncode
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    kill_deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    return proc.returncode


def wait_http_ok(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    what: str = "server",
) -> float:
    """Poll url until it answers 200; return the seconds it took.

    Fails fast with ProcessExitedError when proc exits meanwhile, and with
    TimeoutError after timeout; both messages carry the tail of log_path.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise ProcessExitedError(
                f"{what} exited with code {proc.returncode} before {url} answered 200; last log lines:\n{tail}"
            )
        try:
            status, _ = http_get(url, timeout=2.0)
            if status == 200:
                return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() >= deadline:
            tail = log_tail(log_path) if log_path else ""
            raise TimeoutError(f"{what} did not answer 200 on {url} within {timeout:.0f} s; last log lines:\n{tail}")
        time.sleep(0.25)


class VllmServer:
    """One real vLLM OpenAI server on 127.0.0.1, serving a base model with LoRA enabled.

    ``served_model_name`` is the base model's id; ``extra_served_names`` are
    aliases of the same model (for instance an OpenAI fine-tune id such as
    ``ft:gpt-4o-mini-2024-07-18:acme::abc123``, so litellm can be tested
    against it). ``lora_modules`` are adapters loaded at start; more can be
    loaded at run time through ``/v1/load_lora_adapter``. A restarted server
    has forgotten every adapter loaded at run time.
    """

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        port: int,
        served_model_name: str,
        log_path: Path,
        max_lora_rank: int = 8,
        max_loras: int = 2,
        extra_served_names: Sequence[str] = (),
        lora_modules: Mapping[str, Path] | None = None,
        max_model_len: int = 512,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = Path(python)
        self.model_dir = Path(model_dir)
        self.port = port
        self.served_model_name = served_model_name
        self.log_path = Path(log_path)
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.extra_served_names = list(extra_served_names)
        self.lora_modules = dict(lora_modules or {})
        self.max_model_len = max_model_len
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:8000``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            str(self.python),
            str(HERE / "vllm_launcher.py"),
            "serve",
            str(self.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_model_name,
            *self.extra_served_names,
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
        ]
        if self.lora_modules:
            cmd.append("--lora-modules")
            cmd.extend(f"{name}={path}" for name, path in self.lora_modules.items())
        cmd.extend(self.extra_args)
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(VLLM_ENV)
        env.update(self.extra_env)
        return env

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Launch the server in its own process group; returns at once (see wait_ready)."""
        if self.is_running():
            raise LocalStackError(f"vLLM on port {self.port} is already running")
        self._proc = start_process_group(self.command(), self.log_path, env=self.environment())

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Block until ``GET /health`` answers 200; return the seconds waited.

        Start-up takes 40-110 s on two cores (imports repeat in three
        processes). Raises ProcessExitedError at once if the server dies.
        """
        if self._proc is None:
            raise LocalStackError("wait_ready() called before start()")
        return wait_http_ok(
            f"{self.url}/health",
            timeout,
            proc=self._proc,
            log_path=self.log_path,
            what=f"vLLM (port {self.port})",
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole process group, SIGKILL it after timeout seconds."""
        if self._proc is None:
            return
        stop_process_group(self._proc, timeout=timeout)
        self._proc = None

    def restart(self, wait: bool = True, timeout: float = 300.0) -> None:
        """Stop, start again on the same port, and (by default) wait until ready."""
        self.stop()
        self.start()
        if wait:
            self.wait_ready(timeout)

    def models(self) -> list[dict[str, object]]:
        """The server's ``/v1/models`` entries (base ids, aliases, loaded adapters)."""
        status, body = http_get(f"{self.url}/v1/models")
        if status != 200:
            raise LocalStackError(f"GET /v1/models answered {status}: {body[:200]!r}")
        data = json.loads(body)["data"]
        return [dict(item) for item in data]

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples (see scrape_metrics and metric_total)."""
        return scrape_metrics(self.url)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"VllmServer({self.served_model_name!r}, port={self.port}, {state})"


def _main(argv: Sequence[str]) -> int:
    """``python localstack.py [PORT]``: build what is missing and serve until Ctrl-C."""
    port = int(argv[0]) if argv else 8000
    python = ensure_vllm_env()
    assets = ensure_assets()
    server = VllmServer(
        python,
        assets / "model",
        port,
        "tiny-llama",
        REPO_ROOT / ".turnout" / "logs" / "vllm.log",
    )
    with server:
        print(f"vLLM ready at {server.url} (log {server.log_path}); Ctrl-C stops it", flush=True)
        try:
            while server.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
