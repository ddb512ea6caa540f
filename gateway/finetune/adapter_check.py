"""``turnout adapters check DIR``: the gateway's own adapter validation, plus the checks that need the weights.

The gateway validates an adapter from its config and the safetensors header alone (no tensor is read on
the serving path: :mod:`gateway.adapters.validation`). Before a deployment, reading everything is cheap and
catches what the header cannot show:

* every target module the adapter names exists in the base model (its weights' names, read from the base's
  safetensors headers, or the Llama projections its config implies when it has no weights beside it);
* every tensor is finite (a training run that diverged writes NaN or infinity, which vLLM serves as
  garbage rather than refusing).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.adapters.validation import AdapterFacts, BaseModelFacts, validate_adapter
from gateway.errors import InvalidAdapter

_LLAMA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


@dataclass(slots=True)
class AdapterReport:
    path: Path
    facts: AdapterFacts | None = None
    problems: list[str] = field(default_factory=list)
    tensors: int = 0

    @property
    def valid(self) -> bool:
        return self.facts is not None and not self.problems

    def describe(self) -> dict[str, Any]:
        facts = self.facts
        return {
            "adapter": str(self.path),
            "valid": self.valid,
            "rank": facts.rank if facts else None,
            "target_modules": list(facts.target_modules) if facts else [],
            "tensors": self.tensors,
            "problems": self.problems,
        }


def check_adapter(path: Path, base_dir: Path, *, max_rank: int, names: set[str] | None = None) -> AdapterReport:
    """Everything the gateway checks before loading ``path`` on ``base_dir``, then its modules and weights."""
    report = AdapterReport(path)
    base = BaseModelFacts.from_config((names or set()) | _recorded_name(base_dir), base_dir)
    try:
        report.facts = validate_adapter(path.name, path, max_rank=max_rank, base=base)
    except InvalidAdapter as exc:
        report.problems.append(exc.message)
        return report
    modules = base_modules(base_dir)
    missing = sorted(set(report.facts.target_modules) - modules)
    if missing:
        report.problems.append(
            f"{path / 'adapter_config.json'}: target module(s) {', '.join(missing)} do not exist in the base model "
            f"(it has {', '.join(sorted(modules))})"
        )
    weights = report.facts.weights
    if weights.suffix == ".safetensors":
        report.tensors, bad = _non_finite(weights)
        report.problems += [f"{weights}: {name} holds NaN or infinite values" for name in bad]
    return report


def base_modules(base_dir: Path) -> set[str]:
    """The names of the base model's linear modules a LoRA may target (``q_proj``, ...), from its weights'
    names; the Llama projections when the directory holds no safetensors."""
    found: set[str] = set()
    for weights in sorted(base_dir.glob("*.safetensors")):
        for key, meta in _header(weights).items():
            if key.endswith(".weight") and isinstance(meta, dict) and len(meta.get("shape", [])) == 2:
                found.add(key.rsplit(".", 2)[-2])
    return found or set(_LLAMA_MODULES)


def _recorded_name(base_dir: Path) -> set[str]:
    """The name the base model records for itself (``_name_or_path``), which adapters trained on it record."""
    try:
        name = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return set()
    return {name} if isinstance(name, str) and name else set()


def _header(weights: Path) -> dict[str, Any]:
    with weights.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return header if isinstance(header, dict) else {}


def _non_finite(weights: Path) -> tuple[int, list[str]]:
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights))
    except Exception:  # dtypes numpy lacks (bfloat16): read through torch, which the training extra brings
        from safetensors.torch import load_file as load_torch

        tensors = {name: t.float().numpy() for name, t in load_torch(str(weights)).items()}
    bad = [name for name, tensor in sorted(tensors.items()) if not np.isfinite(tensor).all()]
    return len(tensors), bad


__all__ = ["AdapterReport", "base_modules", "check_adapter"]
