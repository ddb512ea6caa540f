"""Run the whole local stack: a real vLLM server and the Turnout gateway in front of it.

    python deploy/local/demo.py            # make demo
    python deploy/local/demo.py --fleet    # make demo-fleet

Run it with the gateway's Python (the one with Turnout installed). It builds
or reuses the vLLM venv and the tiny model with its adapters, starts vLLM on
127.0.0.1:8000 and the gateway on 127.0.0.1:8080 (``examples/demo.yaml``),
prints requests to try (the README's Quickstart examples), and keeps both running until Ctrl-C or
SIGTERM. With ``--fleet`` it starts two vLLM replicas instead (8000 and 8001, both at once) and serves
``examples/fleet.yaml`` (one gateway in front of both, an adapter pinned on every replica), with
requests to try that show which replica answered.
If vLLM dies, the demo starts it again, as Kubernetes would restart its pod, while the gateway keeps
serving (refusals with 503 ``circuit_open``, or a policy's fallbacks) and heals once vLLM is back: kill it
to see that (the banner says how). If the gateway dies, or vLLM cannot be started again, or every
replica of ``--fleet`` is gone, the others are stopped and the demo exits non-zero with the end of the
dead server's log. Logs are in ``.turnout/logs/``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from localstack import (
    REPO_ROOT,
    LocalStackError,
    VllmServer,
    ensure_assets,
    ensure_vllm_env,
    log_tail,
    start_process_group,
    stop_process_group,
    wait_http_ok,
)
from readme_examples import examples
from walkthrough import QUESTION, ask, check_and_train

VLLM_PORT = 8000
FLEET_PORTS = (8000, 8001)
GATEWAY_URL = "http://127.0.0.1:8080"
GATEWAY_CONFIG = "examples/demo.yaml"
FLEET_CONFIG = "examples/fleet.yaml"
BASE_MODEL = "tiny-llama"
# The same model under an OpenAI fine-tune id, so the demo config can route the
# "openai" target through litellm to a real OpenAI-compatible server.
FINE_TUNE_ALIAS = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
LOG_DIR = REPO_ROOT / ".turnout" / "logs"


class _Stop(Exception):
    """Raised from the signal handlers to leave the wait loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _banner() -> str:
    """What to try, from the README's own Quickstart examples (the test suite runs the same ones)."""
    shown = [example for example in examples() if example.section == "Quickstart"]
    parts = ["", "Turnout is running. In another terminal, from this directory: source .venv/bin/activate", ""]
    for example in shown:
        code = example.code.rstrip()
        if example.language == "python":  # pasteable in the same shell
            code = f"python - <<'PY'\n{code}\nPY"
        parts += [code, ""]
    parts += [
        "# kill vLLM to see the gateway heal: the demo starts it again (as Kubernetes would), requests",
        "# meanwhile get 503 circuit_open at once, and the adapters come back without a gateway restart",
        f"kill -- -$(cat {LOG_DIR / f'vllm-{VLLM_PORT}.pid'})",
        "",
        f"Logs: {LOG_DIR}. Ctrl-C stops both servers.",
    ]
    return "\n".join(parts)


def _fleet_banner() -> str:
    """What to try on the fleet demo: which replica answered, where the adapters are, a replica going away."""
    chat = (
        f"curl -si {GATEWAY_URL}/v1/chat/completions -H 'content-type: application/json' \\\n"
        """  -d '{"model": "%s", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}' """
        "| grep -i '^x-turnout-replica'"
    )
    return "\n".join(
        [
            "",
            "Turnout is running in front of two vLLM replicas. In another terminal, from this directory:",
            "source .venv/bin/activate",
            "",
            "# formal is pinned: loaded on both replicas at start; requests go to the least loaded of them",
            chat % "formal",
            "# pirate is loaded on first use, on one replica, and its requests keep going there",
            chat % "pirate",
            chat % "pirate",
            "",
            "# the gateway's view: per replica its health, requests in flight, and each adapter's state",
            f"turnout adapters status --config {FLEET_CONFIG}",
            f"curl -s {GATEWAY_URL}/metrics | grep -E '^turnout_(replica|adapter_resident)'",
            "",
            "# stop the replica on 8001 (its process group) and requests go on on the other one; start",
            "# it again (in its own terminal) and formal is loaded on it again, without any request:",
            f"kill -- -$(cat {LOG_DIR / 'vllm-8001.pid'})",
            "python deploy/local/localstack.py 8001",
            "",
            f"Logs: {LOG_DIR}. Ctrl-C stops every server.",
        ]
    )


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _vllm(python: Path, assets: Path, port: int, log: str) -> VllmServer:
    return VllmServer(
        python=python,
        model_dir=assets / "model",
        port=port,
        served_model_name=BASE_MODEL,
        log_path=LOG_DIR / log,
        max_lora_rank=8,
        max_loras=2,
        extra_served_names=[FINE_TUNE_ALIAS],
    )


def _remember_pid(server: VllmServer) -> None:
    (LOG_DIR / f"vllm-{server.port}.pid").write_text(f"{server.pid}\n")


def restart_if_gone(server: VllmServer, say: Callable[[str], None]) -> bool:
    """Start vLLM again if it exited (as Kubernetes restarts a pod), and wait until it is ready: True if it
    was restarted. Raises (and so ends the demo) when it cannot be started again."""
    if server.is_running():
        return False
    say(
        f"vLLM on {server.url} exited (last log lines below); starting it again, as Kubernetes would. The "
        "gateway keeps answering meanwhile: 503 circuit_open, or a policy's fallbacks\n" + log_tail(server.log_path)
    )
    server.stop()  # reap it
    server.start()
    _remember_pid(server)
    waited = server.wait_ready(timeout=300.0)
    say(f"vLLM on {server.url} is back after {waited:.0f} s: the gateway sees it on its next probe and loads")
    say("adapters again on their first request (or at once, for pinned ones)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the local demo stack.")
    parser.add_argument("--fleet", action="store_true", help="two vLLM replicas behind the gateway (fleet.yaml)")
    fleet = parser.parse_args().fleet
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)

    servers: list[VllmServer] = []
    gateway: subprocess.Popen[bytes] | None = None
    gateway_log = LOG_DIR / "gateway.log"
    config = FLEET_CONFIG if fleet else GATEWAY_CONFIG
    try:
        _say("preparing the vLLM environment (the first run installs it: several minutes)")
        python = ensure_vllm_env()
        _say("preparing the tiny model and adapters")
        assets = ensure_assets()

        if fleet:
            servers = [_vllm(python, assets, port, f"vllm-{port}.log") for port in FLEET_PORTS]
        else:
            servers = [_vllm(python, assets, VLLM_PORT, "vllm.log")]
        for server in servers:  # all at once: each takes about a minute, mostly imports
            _say(f"starting vLLM on {server.url} (about a minute; log {server.log_path})")
            server.start()
            _remember_pid(server)  # the process group to stop a server by hand (see the banner)
        if not fleet:  # while vLLM starts: the training file checked, an adapter trained from it
            _say(f"walk-through: checking {'examples/finetune/support-formal.jsonl'} and training an adapter from it")
            check_and_train()
        for server in servers:
            waited = server.wait_ready(timeout=300.0)
            _say(f"vLLM on {server.url} ready after {waited:.0f} s")

        _say(f"starting the gateway on {GATEWAY_URL} with {config} (log {gateway_log})")
        gateway = start_process_group(
            [sys.executable, "-m", "gateway", "serve", "--config", config],
            gateway_log,
            cwd=REPO_ROOT,
        )
        waited = wait_http_ok(
            f"{GATEWAY_URL}/ready",
            timeout=180.0,
            proc=gateway,
            log_path=gateway_log,
            what="gateway",
        )
        _say(f"gateway ready after {waited:.0f} s")

        if not fleet:
            _say("ingesting the sample handbook (examples/corpus) into the 'handbook' collection")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "rag",
                    "ingest",
                    "handbook",
                    "examples/corpus",
                    "--config",
                    GATEWAY_CONFIG,
                    "--gateway",
                    GATEWAY_URL,
                ],
                cwd=REPO_ROOT,
                check=True,
            )

        if not fleet:
            _say(f"walk-through: the trained adapter and the base model asked {QUESTION!r}")
            _say(f"  support-formal: {ask(GATEWAY_URL, 'support-formal')!r}")
            _say(f"  {BASE_MODEL}: {ask(GATEWAY_URL, BASE_MODEL)!r}")
        print(_fleet_banner() if fleet else _banner(), flush=True)

        while True:
            if gateway.poll() is not None:
                raise LocalStackError(
                    f"the gateway exited with code {gateway.returncode}; last log lines:\n{log_tail(gateway_log)}"
                )
            if not fleet:
                restart_if_gone(servers[0], _say)
            if fleet and not any(server.is_running() for server in servers):
                raise LocalStackError("every vLLM replica exited; see " + ", ".join(str(s.log_path) for s in servers))
            time.sleep(0.5)
    except _Stop as stop:
        _say(f"{stop.args[0]} received, stopping")
        return 0
    except (LocalStackError, TimeoutError) as exc:
        _say(str(exc))
        return 1
    finally:
        # Ignore further Ctrl-C while children are being stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gateway is not None:
            stop_process_group(gateway)
        for server in servers:
            server.stop()
        _say("stopped")


if __name__ == "__main__":
    sys.exit(main())
