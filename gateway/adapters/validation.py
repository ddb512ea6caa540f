"""Checks an adapter directory before it is ever sent to vLLM.

vLLM's own failures on a bad adapter range from a clear 400 to a crashed engine, so the gateway reads
``adapter_config.json`` and the safetensors header (JSON, no tensors are loaded) and refuses, with a
message naming the file and the problem, anything vLLM could not serve: another PEFT method, a rank
above the server's ``--max-lora-rank``, another base model, or weight shapes that do not fit it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import InvalidAdapter

_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_MAX_HEADER = 64 * 1024 * 1024
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class BaseModelFacts:
    """What adapters are checked against: the base model's accepted names and, when known, its shape."""

    names: frozenset[str]
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    kv_size: int | None = None

    @classmethod
    def from_config(cls, names: set[str], model_dir: Path | None) -> BaseModelFacts:
        """Read the base model's ``config.json`` when its directory is known; names alone otherwise."""
        if model_dir is None:
            return cls(frozenset(names))
        config_file = model_dir / "config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{config_file}: cannot read the base model's config: {exc}") from exc
        hidden = _int(config, "hidden_size")
        heads = _int(config, "num_attention_heads")
        kv_heads = _int(config, "num_key_value_heads") or heads
        head_dim = _int(config, "head_dim") or (hidden // heads if hidden and heads else None)
        return cls(
            names=frozenset(names | {str(model_dir), model_dir.name}),
            hidden_size=hidden,
            intermediate_size=_int(config, "intermediate_size"),
            num_hidden_layers=_int(config, "num_hidden_layers"),
            kv_size=kv_heads * head_dim if kv_heads and head_dim else None,
        )

    def dims(self) -> dict[str, tuple[int | None, int | None]]:
        """(in, out) features of each Llama projection a LoRA may target."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    rank: int
    target_modules: tuple[str, ...]
    weights: Path


def validate_adapter(name: str, path: Path, *, max_rank: int, base: BaseModelFacts) -> AdapterFacts:
    """Return what the adapter is, or raise :class:`InvalidAdapter` saying what is wrong and where."""

    def fail(problem: str) -> InvalidAdapter:
        return InvalidAdapter(f"adapter {name!r} cannot be served: {problem}", param="model")

    if not path.is_dir():
        raise fail(f"{path} is not a directory")
    config_file = path / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"{config_file} is missing") from None
    except (OSError, ValueError) as exc:
        raise fail(f"{config_file} is not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise fail(f"{config_file} must hold a JSON object")

    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise fail(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be served")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise fail(f"{config_file}: r must be a positive integer, not {rank!r}")
    ranks = [rank, *[r for r in (config.get("rank_pattern") or {}).values() if isinstance(r, int)]]
    if max(ranks) > max_rank:
        raise fail(f"{config_file}: rank {max(ranks)} exceeds the server's max LoRA rank {max_rank}")
    recorded = config.get("base_model_name_or_path")
    if base.names and isinstance(recorded, str) and recorded and not _same_base(recorded, base.names):
        raise fail(
            f"{config_file}: it was trained on {recorded!r}, but the base model is {' / '.join(sorted(base.names))}"
        )
    modules = config.get("target_modules") or []
    if isinstance(modules, str):
        modules = [modules]

    weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise fail(f"{path} holds no adapter weights ({' or '.join(_WEIGHT_FILES)})")
    if weights.suffix == ".safetensors":
        _check_shapes(weights, max_rank, base, fail)
    return AdapterFacts(rank=max(ranks), target_modules=tuple(str(m) for m in modules), weights=weights)


def _check_shapes(weights: Path, max_rank: int, base: BaseModelFacts, fail: Any) -> None:
    header = _safetensors_header(weights, fail)
    dims = base.dims()
    for key, meta in header.items():
        if key == "__metadata__" or not isinstance(meta, dict):
            continue
        shape = meta.get("shape")
        if not isinstance(shape, list) or len(shape) != 2:
            continue
        layer = _LAYER.search(key)
        if layer and base.num_hidden_layers is not None and int(layer.group(1)) >= base.num_hidden_layers:
            raise fail(f"{weights}: {key} is for layer {layer.group(1)}, the base model has {base.num_hidden_layers}")
        module = next((m for m in dims if f".{m}." in key), None)
        if "lora_A" in key:
            rank, features = shape
            expected = dims[module][0] if module else None
        elif "lora_B" in key:
            features, rank = shape
            expected = dims[module][1] if module else None
        else:
            continue
        if rank > max_rank:
            raise fail(f"{weights}: {key} has rank {rank}, above the server's max LoRA rank {max_rank}")
        if expected is not None and features != expected:
            raise fail(f"{weights}: {key} has shape {shape}, which does not fit the base model ({expected} features)")


def _safetensors_header(weights: Path, fail: Any) -> dict[str, Any]:
    try:
        with weights.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise fail(f"{weights} is truncated")
            (length,) = struct.unpack("<Q", raw_len)
            if length > _MAX_HEADER:
                raise fail(f"{weights} has an implausible header ({length} bytes)")
            header = json.loads(fh.read(length))
    except OSError as exc:
        raise fail(f"{weights} cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise fail(f"{weights} is not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise fail(f"{weights} is not a safetensors file")
    return header


def _same_base(recorded: str, names: frozenset[str]) -> bool:
    recorded = recorded.rstrip("/")
    return recorded in names or Path(recorded).name in {Path(n.rstrip("/")).name for n in names}


def _int(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
