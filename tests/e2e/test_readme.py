"""Every example of the README, pasted as a newcomer would, against the stack ``make demo`` runs.

The stack is the demo's own: ``examples/demo.yaml`` served by a real ``turnout serve`` in front of the
real vLLM of this test session, the handbook ingested with the real command. Only what a second machine
would differ in is overridden, through the environment the README documents (``TURNOUT_VLLM__URL`` and
friends), and the examples' ``127.0.0.1:8080`` is replaced by this gateway's address. Each example runs
in bash (or the project's Python) with the virtualenv's ``bin`` first on the PATH, as the README tells
the reader to set up, must exit 0, and its output must contain every ``# → TEXT`` it documents.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import localstack
import pytest
import walkthrough
from readme_examples import REPO_ROOT, Example, examples

DEMO_CONFIG = "examples/demo.yaml"
DEMO_ADDRESS = "127.0.0.1:8080"


@dataclass(frozen=True)
class DemoStack:
    address: str
    env: dict[str, str]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{localstack.log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)  # polling for start-up against the deadline, not a timing assertion
    raise RuntimeError(f"the gateway did not become ready in {timeout} s:\n{localstack.log_tail(log)}")


@pytest.fixture(scope="module")
def demo(vllm: localstack.VllmServer, assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    walkthrough.check_and_train(quiet=True)  # what `make demo` does while vLLM starts: the trained adapter
    workdir = tmp_path_factory.mktemp("demo")
    port = localstack.free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # source .venv/bin/activate
        "TURNOUT_VLLM__URL": vllm.url,
        "TURNOUT_OPENAI__API_BASE": f"{vllm.url}/v1",
        "TURNOUT_RAG__STORE__PATH": str(workdir / "qdrant"),
        "TURNOUT_SERVER__PORT": str(port),
    }
    log = workdir / "gateway.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", DEMO_CONFIG],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", process, log)
        # what `make demo` does next: the handbook, through the running gateway
        subprocess.run(
            [sys.executable, "-m", "gateway", "rag", "ingest", "handbook", "examples/corpus", "--config", DEMO_CONFIG],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        yield DemoStack(f"127.0.0.1:{port}", env)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


EXAMPLES = examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line-{e.line}" for e in EXAMPLES])
def test_every_example_does_what_the_readme_says(demo: DemoStack, example: Example) -> None:
    code = example.code.replace(DEMO_ADDRESS, demo.address)
    command = ["bash", "-e", "-c", code] if example.language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=REPO_ROOT, env=demo.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{example.where()} exited {result.returncode}:\n{result.stderr[-2000:]}"
    for expected in example.expected:
        assert expected in result.stdout, f"{example.where()}: {expected!r} not in:\n{result.stdout[-3000:]}"
