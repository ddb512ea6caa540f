"""Reading the configuration file: YAML, then environment overrides, then validation.

Every problem is reported as ``FILE: KEY.PATH: PROBLEM``, one line each, so an operator can go straight to
the line to fix; a value that came from the environment names its variable instead of the file. Keys are
written one way everywhere (:func:`gateway.config.references.key_path`: ``policies.bot.rules[3].when``).

Every problem comes out of one pass: when the schema refuses a part of the file, the checks between
sections and of the files it points at still run on every part that validates on its own, so fixing one
problem never reveals another that was there all along.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.config import references
from gateway.config.model import (
    PACKAGED_EMBEDDER,
    ApiKeyConfig,
    BaseModelConfig,
    CollectionConfig,
    CostsConfig,
    EmbeddingsConfig,
    EnvironmentSource,
    TurnoutConfig,
)
from gateway.config.prices import PriceError, litellm_price_map, openai_price
from gateway.config.references import Declared, PolicyParts, key_path, valid

ENV_PREFIX = "TURNOUT_"
# Errors saying a value is not a list or a mapping (from the environment: a value that is not JSON).
_SHAPE = re.compile(r"should be (.+), not (.+)")
_CONTAINERS = {"list_type": "list", "dict_type": "object", "model_type": "object", "model_attributes_type": "object"}


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
    except SettingsError as exc:  # not expected: the environment source leaves undecodable values to the schema
        raise ConfigError(file, [f"environment: {exc}: {exc.__cause__}"]) from exc
    except ValidationError as exc:
        raise ConfigError(file, _invalid_file_problems(file, data, exc)) from exc
    config = _resolve_paths(config, file.resolve().parent)
    problems = _file_problems(file, config.base_model, config.embeddings, config.costs, config.declared().policies)
    if problems:
        raise ConfigError(file, problems)
    return config


def _invalid_file_problems(file: Path, data: dict[str, Any], exc: ValidationError) -> list[str]:
    """The schema's problems, then those of the checks the schema's failure kept from running."""
    try:
        merged = _overlay(data, EnvironmentSource(TurnoutConfig)())
    except SettingsError:
        merged = data
    errors = exc.errors()
    problems = _schema_problems(file, errors, merged, os.environ)
    if all(error["loc"] for error in errors):  # the model's checks between sections did not run: run them here
        declared = _declared(merged)
        problems += [f"{file}: {line}" for line in references.problems(declared)]
        base = file.resolve().parent
        problems += _file_problems(
            file,
            _resolved_base_model(valid(BaseModelConfig, merged.get("base_model", {})), base),
            _resolved_embeddings(valid(EmbeddingsConfig, merged.get("embeddings", {})), base),
            valid(CostsConfig, merged.get("costs", {})),
            declared.policies,
        )
    return list(dict.fromkeys(problems))


def _declared(data: Mapping[str, Any]) -> Declared:
    """What an invalid file declares, from the parts that validate (see :class:`Declared`)."""
    vllm, base_model, rag = (_mapping(data.get(key, {})) or {} for key in ("vllm", "base_model", "rag"))
    policies = _mapping(data.get("policies", {})) or {}
    base = base_model.get("name") if base_model.get("name") is not None else vllm.get("model")
    raw_collections = _mapping(rag.get("collections", {}))
    collections = None
    if raw_collections is not None:
        collections = {}
        for name, raw in raw_collections.items():
            spec = valid(CollectionConfig, raw)
            collections[str(name)] = spec.on_empty if spec is not None else None
    auth = _mapping(data.get("auth", {})) or {}
    keys = auth.get("keys", [])
    return Declared(
        base=base if isinstance(base, str) else None,
        adapters=_names(data.get("adapters", {})),
        intents=_names(data.get("intents", {})),
        collections=collections,
        key_digests=[key.digest() if (key := valid(ApiKeyConfig, raw)) else None for raw in keys]
        if isinstance(keys, list)
        else None,
        policies={str(name): PolicyParts.of_raw(raw) for name, raw in policies.items()},
    )


def _mapping(value: object) -> Mapping[Any, Any] | None:
    return value if isinstance(value, Mapping) else None


def _names(value: object) -> frozenset[str] | None:
    return frozenset(str(name) for name in value) if isinstance(value, Mapping) else None


def _overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, mappings merged key by key (how the environment overrides the file)."""
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        merged[key] = _overlay(below, value) if isinstance(below, Mapping) and isinstance(value, Mapping) else value
    return merged


def _resolved_base_model(section: BaseModelConfig | None, base: Path) -> BaseModelConfig | None:
    if section is None or section.path is None:
        return section
    return section.model_copy(update={"path": (base / section.path).resolve()})


def _resolved_embeddings(section: EmbeddingsConfig | None, base: Path) -> EmbeddingsConfig | None:
    if section is None or section.model == PACKAGED_EMBEDDER:
        return section
    return section.model_copy(update={"model": str((base / section.model).resolve())})


def _file_problems(
    file: Path,
    base_model: BaseModelConfig | None,
    embeddings: EmbeddingsConfig | None,
    costs: CostsConfig | None,
    policies: Mapping[str, PolicyParts],
) -> list[str]:
    """What the schema cannot see: files the configuration points at, prices of the models it names.
    A section given as None did not validate and is not checked (paths are already resolved)."""
    problems = []
    base_dir = base_model.path if base_model is not None else None
    if base_dir is not None:
        try:
            parsed = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
        except OSError:
            problems.append(f"{file}: base_model.path: {base_dir} has no config.json (is it a model directory?)")
        except ValueError as exc:
            problems.append(f"{file}: base_model.path: {base_dir / 'config.json'} is not valid JSON ({exc})")
    model = embeddings.model if embeddings is not None else PACKAGED_EMBEDDER
    if model != PACKAGED_EMBEDDER and not Path(model).is_dir():
        problems.append(
            f"{file}: embeddings.model: {model!r} is neither {PACKAGED_EMBEDDER!r} nor a local model directory"
        )
    return problems + (_price_problems(file, costs, policies) if costs is not None else [])


def _price_problems(file: Path, costs: CostsConfig, policies: Mapping[str, PolicyParts]) -> list[str]:
    """Every OpenAI model a policy names needs a price (litellm's map or costs.openai.models)."""
    used = [
        (key_path(("policies", name, *at)), target.openai)
        for name, parts in policies.items()
        for at, target in parts.targets
        if target.openai is not None
    ]
    prices = litellm_price_map() if any(model not in costs.openai.models for _, model in used) else {}
    problems = []
    for at, model in used:
        try:
            openai_price(model, costs, prices)
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


def _schema_problems(file: Path, errors: list[Any], data: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """One line per key the schema refuses; the messages of a key that fits no member of a union are joined."""
    found: dict[tuple[str, str], list[str]] = {}
    for error in errors:
        loc = list(error.get("loc", ()))
        if error.get("type") != "missing":
            loc = _present(loc, data)  # drops pydantic's union member names and "[key]" markers
        variable = _env_var_for(loc, env)
        source = f"environment variable {variable}" if variable else str(file)
        message = _message(error, env.get(variable) if variable else None)
        if loc:
            found.setdefault((source, key_path(loc)), []).append(message)
        else:  # the model's checks between sections: each line names its own key
            for line in message.splitlines():
                found.setdefault((source, line), [])
    return [
        f"{source}: {key}: {_joined(messages)}" if messages else f"{source}: {key}"
        for (source, key), messages in found.items()
    ]


def _joined(messages: list[str]) -> str:
    """A union's messages as one: ``should be a valid string or a list, not a number``."""
    messages = list(dict.fromkeys(messages))
    shapes = [(m[1], m[2]) for message in messages if (m := _SHAPE.fullmatch(message))]
    if len(messages) > 1 and len(shapes) == len(messages) and len({got for _, got in shapes}) == 1:
        return f"should be {' or '.join(wanted for wanted, _ in shapes)}, not {shapes[0][1]}"
    return ", or ".join(messages)


def _message(error: Any, env_value: str | None) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against 'turnout config schema')"
    if kind == "missing":
        return "required key is missing"
    if kind in _CONTAINERS:
        if env_value is not None:
            try:
                json.loads(env_value)
            except json.JSONDecodeError as exc:
                return (
                    f"the value is not valid JSON ({exc.msg} at character {exc.pos + 1}); "
                    f"this key takes a JSON {_CONTAINERS[kind]}"
                )
        wanted = "a list" if kind == "list_type" else "a mapping of keys"
        return f"should be {wanted}, not {_kind_of(error.get('input'))}"  # not pydantic's class names
    message = str(error.get("msg", "invalid value"))
    if str(kind).endswith("_type") and message.startswith("Input should be "):
        return f"should be {message.removeprefix('Input should be ')}, not {_kind_of(error.get('input'))}"
    return message.removeprefix("Value error, ")


def _kind_of(value: object) -> str:
    """What a value is, in the words of a YAML file."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, Mapping) else type(value).__name__


def _present(loc: list[Any], data: Mapping[str, Any]) -> list[Any]:
    """The longest start of ``loc`` that names keys and positions present in ``data``."""
    node: Any = data
    kept = []
    for part in loc:
        if isinstance(node, Mapping):
            present = part in node
        else:
            present = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not present:
            break
        node = node[part]
        kept.append(part)
    return kept


def _env_var_for(loc: list[Any], env: Mapping[str, str]) -> str | None:
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(part) for part in loc[:depth]).upper()
        for candidate in env:
            if candidate.upper() == name:
                return candidate
    return None


def _resolve_paths(config: TurnoutConfig, base: Path) -> TurnoutConfig:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    adapters = {
        name: spec if spec.path is None else spec.model_copy(update={"path": resolve(spec.path)})
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
    if embeddings.export_dir is not None:
        embeddings = embeddings.model_copy(update={"export_dir": resolve(embeddings.export_dir)})
    adapter_store = config.adapter_store
    if adapter_store.path is not None:
        adapter_store = adapter_store.model_copy(update={"path": resolve(adapter_store.path)})
    shadows = config.shadows.model_copy(update={"store": resolve(config.shadows.store)})
    return config.model_copy(
        update={
            "shadows": shadows,
            "adapters": adapters,
            "base_model": base_model,
            "rag": rag,
            "embeddings": embeddings,
            "adapter_store": adapter_store,
        }
    )
