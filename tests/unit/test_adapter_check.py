"""``turnout adapters check`` on real adapters of the tiny model, each spoilt one way: another base model, a
rank above the server's, a target module the base does not have, a NaN in the weights; each refused with the
message that names the problem, and the untouched adapter accepted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from gateway.cli import app
from gateway.finetune.adapter_check import base_modules, check_adapter

runner = CliRunner()


@pytest.fixture
def adapter(base_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "formal"
    shutil.copytree(base_model_dir.parent / "adapters" / "formal", copy)
    return copy


def _edit_config(adapter: Path, **changes: object) -> None:
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))


def _poison(adapter: Path) -> str:
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, str(weights))
    return name


def test_the_base_models_modules_are_read_from_its_weights(base_model_dir: Path) -> None:
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= base_modules(base_model_dir)


def test_a_sound_adapter_is_valid(adapter: Path, base_model_dir: Path) -> None:
    report = check_adapter(adapter, base_model_dir, max_rank=8)
    assert report.valid, report.problems
    assert report.tensors > 0


@pytest.mark.parametrize(
    ("spoil", "max_rank", "expected"),
    [
        (lambda a: _edit_config(a, base_model_name_or_path="meta-llama/Llama-3.1-8B"), 8, "it was trained on"),
        (lambda a: None, 4, "exceeds the server's max LoRA rank 4"),
        (lambda a: _edit_config(a, target_modules=["q_proj", "w_pack"]), 8, "w_pack do not exist in the base model"),
        (_poison, 8, "holds NaN or infinite values"),
    ],
    ids=["another-base", "rank-too-high", "missing-module", "non-finite"],
)
def test_a_spoilt_adapter_is_refused_with_its_reason(
    adapter: Path, base_model_dir: Path, spoil: Callable[[Path], object], max_rank: int, expected: str
) -> None:
    spoil(adapter)
    report = check_adapter(adapter, base_model_dir, max_rank=max_rank)
    assert not report.valid
    assert any(expected in problem for problem in report.problems), report.problems
    result = runner.invoke(
        app, ["adapters", "check", str(adapter), "--base", str(base_model_dir), "--max-rank", str(max_rank)]
    )
    assert result.exit_code == 1
    assert expected in result.output


def test_the_command_says_valid_and_needs_a_base(adapter: Path, base_model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["adapters", "check", str(adapter), "--base", str(base_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["valid"]
    assert facts["rank"] == 8
    assert sorted(facts["target_modules"]) == ["q_proj", "v_proj"]
    nowhere = runner.invoke(app, ["adapters", "check", str(adapter), "--base", str(tmp_path)])
    assert nowhere.exit_code == 2
