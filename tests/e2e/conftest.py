"""Session fixtures: the real vLLM server (CPU build) with locally built tiny model and adapters,
and gateways started as real processes in front of it.

vLLM starts once per test session (40-110 s on two cores); every end-to-end test shares it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localstack
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.recorder import RecordingProxy
from tests.support.stack import BASE, FINE_TUNE, MAX_LORA_RANK, gateway_config


@pytest.fixture(scope="session")
def assets() -> Path:
    localstack.ensure_vllm_env()
    return localstack.ensure_assets()


@pytest.fixture(scope="session")
def vllm(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack.VllmServer]:
    python = localstack.ensure_vllm_env()
    server = localstack.VllmServer(
        python=python,
        model_dir=assets / "model",
        port=localstack.free_port(),
        served_model_name=BASE,
        log_path=tmp_path_factory.mktemp("vllm") / "vllm.log",
        max_lora_rank=MAX_LORA_RANK,
        max_loras=2,
        extra_served_names=[FINE_TUNE],  # the same model, as an OpenAI fine-tune for the litellm route
        extra_args=["--enable-log-requests"],  # logs "Aborted request(s) ID": how tests see a cancelled stream
    )
    server.start()
    try:
        server.wait_ready(timeout=600)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway(
    vllm: localstack.VllmServer, assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The main gateway, straight in front of vLLM."""
    process = GatewayProcess(
        gateway_config(vllm.url, assets), tmp_path_factory.mktemp("gateway"), localstack.free_port()
    )
    with process:
        yield process


@pytest.fixture(scope="session")
def proxy(vllm: localstack.VllmServer) -> Iterator[RecordingProxy]:
    recorder = RecordingProxy(vllm.url)
    recorder.start()
    yield recorder
    recorder.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Any]:
    """Start extra gateways with their own configuration; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> GatewayProcess:
        process = GatewayProcess(config, tmp_path, localstack.free_port(), env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
