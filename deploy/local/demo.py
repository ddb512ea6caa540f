"""Run the whole local stack: a real vLLM server and the Turnout gateway in front of it.

    python deploy/local/demo.py

Run it with the gateway's Python (the one with Turnout installed). It builds
or reuses the vLLM venv and the tiny model with its adapters, starts vLLM on
127.0.0.1:8000 and the gateway on 127.0.0.1:8080 (``examples/demo.yaml``),
prints requests to try (the README's Quickstart examples), and keeps both running until Ctrl-C or
SIGTERM.
If either server dies, the other is stopped and the demo exits non-zero with
the end of the dead server's log. Logs are in ``.turnout/logs/``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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

VLLM_PORT = 8000
GATEWAY_URL = "http://127.0.0.1:8080"
GATEWAY_CONFIG = "examples/demo.yaml"
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
    parts.append(f"Logs: {LOG_DIR}. Ctrl-C stops both servers.")
    return "\n".join(parts)


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def main() -> int:
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)

    vllm: VllmServer | None = None
    gateway: subprocess.Popen[bytes] | None = None
    gateway_log = LOG_DIR / "gateway.log"
    try:
        _say("preparing the vLLM environment (the first run installs it: several minutes)")
        python = ensure_vllm_env()
        _say("preparing the tiny model and adapters")
        assets = ensure_assets()

        vllm = VllmServer(
            python=python,
            model_dir=assets / "model",
            port=VLLM_PORT,
            served_model_name=BASE_MODEL,
            log_path=LOG_DIR / "vllm.log",
            max_lora_rank=8,
            max_loras=2,
            extra_served_names=[FINE_TUNE_ALIAS],
        )
        _say(f"starting vLLM on {vllm.url} (about a minute; log {vllm.log_path})")
        vllm.start()
        waited = vllm.wait_ready(timeout=300.0)
        _say(f"vLLM ready after {waited:.0f} s")

        _say(f"starting the gateway on {GATEWAY_URL} (log {gateway_log})")
        gateway = start_process_group(
            [sys.executable, "-m", "gateway", "serve", "--config", GATEWAY_CONFIG],
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

        print(_banner(), flush=True)

        while True:
            if gateway.poll() is not None:
                raise LocalStackError(
                    f"the gateway exited with code {gateway.returncode}; last log lines:\n{log_tail(gateway_log)}"
                )
            if not vllm.is_running():
                raise LocalStackError(f"vLLM exited; last log lines:\n{log_tail(vllm.log_path)}")
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
        if vllm is not None:
            vllm.stop()
        _say("stopped")


if __name__ == "__main__":
    sys.exit(main())
