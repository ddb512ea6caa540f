"""Reading the configuration file: YAML, then environment overrides, then validation.

Every problem is reported as ``FILE: KEY.PATH: PROBLEM`` (one line per problem) so an operator can go
straight to the line to fix; values that came from the environment name the variable instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.config.model import PACKAGED_EMBEDDER, AdapterConfig, BaseModelConfig, TurnoutConfig
from gateway.config.prices import PriceError, litellm_price_map, openai_price

ENV_PREFIX = "TURNOUT_"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one readable line per problem."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


def load_config(path: str | Path) -> TurnoutConfig:
    """Read, override from the environment, validate, and resolve relative paths against the file."""
    file = Path(path)
    data = _read_yaml(file)
    odd = [repr(k) for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(file, [f"{file}: top-level keys must be section names, not {', '.join(odd)}"])
    try:
        config = TurnoutConfig(**data)
    except SettingsError as exc:
        raise ConfigError(file, [f"environment: {exc} (TURNOUT_* variables of sections take JSON)"]) from exc
    except ValidationError as exc:
        problems = [line for err in exc.errors() for line in _describe(file, err, os.environ)]
        raise ConfigError(file, problems) from exc
    config = _resolve_paths(config, file.resolve().parent)
    problems = _file_problems(config, file)
    if problems:
        raise ConfigError(file, problems)
    return config


def _file_problems(config: TurnoutConfig, file: Path) -> list[str]:
    """What the schema cannot see: files the configuration points at."""
    problems = []
    base_dir = config.base_model.path
    if base_dir is not None:
        try:
            parsed = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
        except OSError:
            problems.append(f"{file}: base_model.path: {base_dir} has no config.json (is it a model directory?)")
        except ValueError as exc:
            problems.append(f"{file}: base_model.path: {base_dir / 'config.json'} is not valid JSON ({exc})")
    model = config.embeddings.model
    if model != PACKAGED_EMBEDDER and not Path(model).is_dir():
        problems.append(
            f"{file}: embeddings.model: {model!r} is neither {PACKAGED_EMBEDDER!r} nor a local model directory"
        )
    return problems + _price_problems(config, file)


def _price_problems(config: TurnoutConfig, file: Path) -> list[str]:
    """Every OpenAI model a policy names needs a price (litellm's map or costs.openai.models)."""
    used = [
        (f"policies.{name}.{at}", target.openai)
        for name, policy in config.policies.items()
        for at, target in policy.targets()
        if target.openai is not None
    ]
    prices = litellm_price_map() if any(model not in config.costs.openai.models for _, model in used) else {}
    problems = []
    for at, model in used:
        try:
            openai_price(model, config.costs, prices)
        except PriceError as exc:
            problems.append(f"{file}: {at}: {exc}")
    return problems


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, [f"{file}: cannot read the file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(file, [f"{file}: not UTF-8 text: {exc.reason}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(file, [f"{file}: {where}: invalid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(file, [f"{file}: invalid YAML: {exc}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [f"{file}: the top level must be a mapping of sections, not {type(data).__name__}"])
    return data


def _describe(file: Path, err: Any, env: Mapping[str, str]) -> list[str]:
    loc = [str(part) for part in err.get("loc", ())]
    key = ".".join(loc)
    message = str(err.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        message = "unknown key (check its spelling against `turnout config schema`)"
    elif err.get("type") == "missing":
        message = "required key is missing"
    variable = _env_var_for(loc, env)
    source = f"environment variable {variable}" if variable else str(file)
    if key:
        return [f"{source}: {key}: {message}"]
    return [f"{source}: {line}" for line in message.splitlines()]  # each names its own key path


def _env_var_for(loc: list[str], env: Mapping[str, str]) -> str | None:
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(loc[:depth]).upper()
        for candidate in env:
            if candidate.upper() == name:
                return candidate
    return None


def _resolve_paths(config: TurnoutConfig, base: Path) -> TurnoutConfig:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    adapters = {
        name: AdapterConfig.model_validate({**spec.model_dump(), "path": resolve(spec.path)})
        for name, spec in config.adapters.items()
    }
    base_model = config.base_model
    if base_model.path is not None:
        base_model = BaseModelConfig.model_validate({**base_model.model_dump(), "path": resolve(base_model.path)})
    store = config.rag.store.model_copy(update={"path": resolve(config.rag.store.path)})
    rag = config.rag.model_copy(update={"store": store})
    embeddings = config.embeddings
    if embeddings.model != PACKAGED_EMBEDDER:
        # Made absolute, but links kept: clients know the model by this directory's name (embeddings.name's
        # default), which must not become a link target's, such as a versioned directory behind "current".
        embeddings = embeddings.model_copy(update={"model": os.path.abspath(base / embeddings.model)})
    return config.model_copy(
        update={"adapters": adapters, "base_model": base_model, "rag": rag, "embeddings": embeddings}
    )
