"""Adapter checks before loading, on adapter directories written by the test (no torch needed)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.validation import BaseModelFacts, validate_adapter
from gateway.errors import InvalidAdapter

HIDDEN, INTERMEDIATE, LAYERS = 128, 256, 2


def _base(tmp_path: Path) -> BaseModelFacts:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": HIDDEN,
                "intermediate_size": INTERMEDIATE,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
            }
        )
    )
    return BaseModelFacts.from_config({"tiny-llama", "turnout/tiny-llama"}, model)


def _adapter(
    tmp_path: Path, *, rank: int = 8, config: dict[str, Any] | None = None, shapes: dict[str, list[int]] | None = None
) -> Path:
    path = tmp_path / "adapter"
    path.mkdir()
    settings = {
        "peft_type": "LORA",
        "r": rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "turnout/tiny-llama",
    }
    settings.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(settings))
    if shapes is None:
        shapes = {}
        for layer in range(LAYERS):
            for module in ("q_proj", "v_proj"):
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                shapes[f"{prefix}.lora_A.weight"] = [rank, HIDDEN]
                shapes[f"{prefix}.lora_B.weight"] = [HIDDEN, rank]
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        size = shape[0] * shape[1] * 4
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)
    return path


def test_a_fitting_adapter_passes(tmp_path: Path) -> None:
    facts = validate_adapter("ok", _adapter(tmp_path), max_rank=8, base=_base(tmp_path))
    assert facts.rank == 8
    assert facts.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 16}, "rank 16 exceeds the server's max LoRA rank 8"),
        ({"config": {"peft_type": "PREFIX_TUNING"}}, "only LORA adapters"),
        ({"config": {"r": "eight"}}, "r must be a positive integer"),
        ({"config": {"rank_pattern": {"q_proj": 32}}}, "rank 32 exceeds"),
        ({"config": {"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}}, "trained on 'meta-llama/Llama-3.1-8B'"),
        (
            {"shapes": {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": [8, 4096]}},
            "does not fit the base model (128 features)",
        ),
        (
            {"shapes": {"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": [8, 128]}},
            "is for layer 7, the base model has 2",
        ),
    ],
)
def test_misfits_are_refused_with_the_reason(tmp_path: Path, kwargs: dict[str, Any], needle: str) -> None:
    path = _adapter(tmp_path, **kwargs)
    with pytest.raises(InvalidAdapter) as caught:
        validate_adapter("bad", path, max_rank=8, base=_base(tmp_path))
    assert needle in caught.value.message
    assert "adapter 'bad'" in caught.value.message
    assert caught.value.status == 400


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    base = _base(tmp_path)
    with pytest.raises(InvalidAdapter, match="is not a directory"):
        validate_adapter("x", tmp_path / "nothing", max_rank=8, base=base)
    path = _adapter(tmp_path)
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match="holds no adapter weights"):
        validate_adapter("x", path, max_rank=8, base=base)
    (path / "adapter_model.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(InvalidAdapter, match="truncated"):
        validate_adapter("x", path, max_rank=8, base=base)
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapter, match="not readable JSON"):
        validate_adapter("x", path, max_rank=8, base=base)


def test_without_a_base_directory_only_names_and_ranks_are_checked(tmp_path: Path) -> None:
    path = _adapter(tmp_path, shapes={"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": [8, 999]})
    names_only = BaseModelFacts(frozenset({"tiny-llama"}))
    assert validate_adapter("x", path, max_rank=8, base=names_only).rank == 8
