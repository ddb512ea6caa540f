"""What the end-to-end tests share: the model names the built assets serve, and gateway configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE = "tiny-llama"
ADAPTERS = ("formal", "terse", "pirate")
MAX_LORA_RANK = 8
FINE_TUNE = "ft:gpt-4o-mini-2024-07-18:acme::abc123"


def gateway_config(vllm_url: str, assets: Path, *, adapters: tuple[str, ...] = ADAPTERS, **vllm: Any) -> dict[str, Any]:
    """A gateway configuration in front of ``vllm_url`` declaring ``adapters`` from the built assets."""
    return {
        "server": {"log_level": "info"},
        "vllm": {
            "url": vllm_url,
            "model": BASE,
            "max_lora_rank": MAX_LORA_RANK,
            "max_resident": 2,
            **vllm,
        },
        "base_model": {"path": str(assets / "model"), "aliases": ["turnout/tiny-llama"]},
        # an L4-class GPU at its on-demand price, so self-hosted routes cost something to check
        "costs": {"vllm": {"gpu_hour_usd": 0.8, "prompt_tokens_per_second": 4000, "completion_tokens_per_second": 400}},
        "adapters": {
            name: {"path": str(assets / "adapters" / name), "description": f"{name} tone"} for name in adapters
        },
    }


def turnout_info(model: Any) -> dict[str, Any]:
    """The ``turnout`` object the gateway adds to each /v1/models entry."""
    extra = model.model_extra or {}
    info = extra.get("turnout")
    assert isinstance(info, dict), f"{model.id} has no turnout object"
    return info
