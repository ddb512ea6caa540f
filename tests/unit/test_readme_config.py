"""The README's configuration table and the configuration model say the same keys.

Every leaf key of :class:`gateway.config.model.TurnoutConfig` is written as the README writes it: sections
joined by dots; a mapping of named entries with the placeholder ``NAME`` (``MODEL`` for the prices of
OpenAI models); a list of objects with ``[]`` after its key (``auth.keys[]``), its fields described in the
row. A target of the policy language (``policies.NAME.default``, ``fallbacks``) is one key: the Policies
section describes what a target holds.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from gateway.config.model import TurnoutConfig
from routing.spec import TargetSpec

README = Path(__file__).resolve().parents[2] / "README.md"
# Objects documented as one key: their fields belong to another section of the README.
WHOLE = (TargetSpec,)


def _bare(annotation: Any) -> Any:
    """The type without Annotated metadata and without None in an optional."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _bare(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _bare(members[0])
    return annotation


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model whose fields are keys of their own, if ``annotation`` is one."""
    kind = _bare(annotation)
    if isinstance(kind, type) and issubclass(kind, BaseModel) and not issubclass(kind, WHOLE):
        return kind
    return None


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = _bare(field.annotation)
        origin, args = get_origin(annotation), get_args(annotation)
        nested = _section(annotation)
        if nested is not None:
            yield from _keys(nested, f"{key}.")
        elif origin is dict and (entry := _section(args[1])) is not None:
            placeholder = "MODEL" if name == "models" else "NAME"
            yield from _keys(entry, f"{key}.{placeholder}.")
        elif origin is list and _section(args[0]) is not None:
            yield f"{key}[]"
        else:
            yield key


def model_keys() -> list[str]:
    """Every leaf key of the configuration, as the README writes it."""
    return list(_keys(TurnoutConfig))


def table_keys(text: str) -> list[str]:
    """The keys in the first column of the table under ``## Configuration`` (a cell may hold several)."""
    section = f"\n{text}".split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = iter(section.splitlines())
    for line in lines:
        if re.fullmatch(r"\|\s*key\s*\|\s*default\s*\|\s*meaning\s*\|", line.strip()):
            break
    else:
        raise AssertionError("README.md: no | key | default | meaning | table under ## Configuration")
    keys = []
    for line in lines:
        if not line.startswith("|"):
            break
        keys += re.findall(r"`([^`]+)`", line.split("|")[1])
    return keys


def test_the_walk_reads_the_model_as_the_readme_writes_it() -> None:
    keys = model_keys()
    assert "vllm.health.eject_after" in keys
    assert "adapters.NAME.pinned" in keys
    assert "costs.openai.models.MODEL.input" in keys
    assert "auth.keys[]" in keys
    assert "policies.NAME.rules[]" in keys
    assert "policies.NAME.default" in keys
    assert not any(key.startswith(("auth.keys.", "policies.NAME.default.")) for key in keys)
    assert len(keys) == len(set(keys))


def test_the_table_parser_reads_the_first_column() -> None:
    text = (
        "## Configuration\n\nSee `x.y`.\n\n| key | default | meaning |\n|---|---|---|\n"
        "| `a.b`, `a.c` | `1` | like `c.d` |\n\n| `e.f` | | |\n## Next\n| `g.h` | | |\n"
    )
    assert table_keys(text) == ["a.b", "a.c"]


def test_every_configuration_key_has_a_row_in_the_readme() -> None:
    documented = set(table_keys(README.read_text(encoding="utf-8")))
    missing = [key for key in model_keys() if key not in documented]
    assert not missing, f"README.md's configuration table has no row for: {', '.join(missing)}"


def test_every_row_of_the_table_is_a_configuration_key() -> None:
    keys = set(model_keys())
    unknown = [key for key in table_keys(README.read_text(encoding="utf-8")) if key not in keys]
    assert not unknown, f"README.md's configuration table documents keys the configuration has not: {unknown}"
