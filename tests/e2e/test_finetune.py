"""An adapter trained here by ``turnout adapters train`` (the demo's walk-through: the sample support file on
the tiny model) passes ``turnout adapters check``, loads into the real vLLM through the gateway, and answers
differently from the base model: in the register it was trained on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import walkthrough

from tests.support.stack import BASE, MAX_LORA_RANK, gateway_config


def test_a_trained_adapter_is_valid_served_by_vllm_and_answers_in_its_register(
    vllm: Any, assets: Path, start_gateway: Any
) -> None:
    trained = walkthrough.check_and_train(quiet=True)
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "adapters", "check", str(trained), "--base", str(assets / "model"),
         "--max-rank", str(MAX_LORA_RANK)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = gateway_config(vllm.url, assets)
    config["adapters"]["support-formal"] = {"path": str(trained)}
    gateway = start_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages: Any = [
        {"role": "system", "content": walkthrough.SYSTEM},
        {"role": "user", "content": walkthrough.QUESTION},
    ]
    answers = {
        model: client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
        for model in ("support-formal", BASE)
    }
    assert answers["support-formal"] != answers[BASE], answers
    assert (answers["support-formal"] or "").startswith("Dear customer"), (
        answers
    )  # what every answer it saw begins with
