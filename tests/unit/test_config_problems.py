"""Every problem of a configuration in one pass, one line each, keys in one notation, variables named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_config
from gateway.config.references import PolicyParts, key_path
from routing.spec import PolicySpec
from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import gateway_config, serve_gateway

# A position written the other way (``rules.0.when``, ``arms.1``) anywhere in a line's key.
DOTTED_POSITION = re.compile(r"\.\d+(?=[.:\[]|$)")


def _problems(tmp_path: Path, config: dict[str, Any]) -> list[str]:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def _keys(problems: list[str], prefix: str) -> list[str]:
    return [line.removeprefix(prefix).split(": ", 1)[0] for line in problems if line.startswith(prefix)]


BROKEN = {
    "vllm": {"model": "m", "max_resident": 0},  # schema
    "adapters": {"formal": {"path": "formal"}},
    "intents": {"billing": {"examples": ["refund please"]}},
    "embeddings": {"model": "no-such-model-dir"},  # a file the configuration points at
    "policies": {
        "support-bot": {
            "default": "adapter:ghost",  # reference
            "fallbacks": ["base", "adapter:spectre"],  # reference, at a position
            "rules": [
                {"name": "a", "when": {"intent": "nope"}, "target": "base"},  # reference
                {"name": "b", "when": {"header": {"name": "x"}}, "target": "base"},  # schema, same policy
                {"name": "c", "when": {"model": 5}, "target": "adapter:formal"},  # schema (a union)
                {
                    "name": "d",
                    "split": {"arms": [{"weight": 1, "target": "base"}, {"weight": 1, "target": "adapter:nobody"}]},
                },
            ],
        },
        "bot": {"rules": [{"name": "x", "when": {"keywords": []}, "target": "base"}]},  # schema: no default
    },
}


def test_schema_reference_and_file_problems_come_out_together(tmp_path: Path) -> None:
    problems = _problems(tmp_path, BROKEN)
    prefix = f"{tmp_path / 'turnout.yaml'}: "
    assert all(line.startswith(prefix) for line in problems), problems
    assert sorted(_keys(problems, prefix)) == sorted(
        [
            "vllm.max_resident",
            "embeddings.model",
            "policies.support-bot.default",
            "policies.support-bot.fallbacks[1]",
            "policies.support-bot.rules[0].when",
            "policies.support-bot.rules[1].when.header",
            "policies.support-bot.rules[2].when.model",
            "policies.support-bot.rules[3].split.arms[1].target",
            "policies.bot.default",
            "policies.bot.rules[0].when.keywords",
        ]
    ), problems
    assert f"{prefix}policies.support-bot.rules[0].when: intent 'nope' is not defined under intents" in problems
    assert f"{prefix}policies.support-bot.default: adapter 'ghost' is not declared under adapters" in problems
    assert f"{prefix}policies.bot.default: required key is missing" in problems
    # a value that fits no member of a union is one line, not one per member
    assert (
        f"{prefix}policies.support-bot.rules[2].when.model: should be a valid string or a list, not a number"
        in problems
    )


def test_a_valid_schema_with_broken_references_reports_them_all(tmp_path: Path) -> None:
    config = {**BROKEN, "vllm": {"model": "m"}, "embeddings": {}}
    config["policies"] = {"support-bot": {**BROKEN["policies"]["support-bot"], "rules": []}}  # type: ignore[index]
    problems = _problems(tmp_path, config)
    assert [line.split(": ", 2)[1] for line in problems] == [
        "policies.support-bot.default",
        "policies.support-bot.fallbacks[1]",
    ]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"vllm": {"model": "m"}, "adapters": {"llama-3.1": {"path": 1}}}, 'adapters["llama-3.1"].path'),
        ({"vllm": {"model": "m"}, "adapters": {"bad name": {"path": "x"}}}, 'adapters["bad name"]'),
        (
            {"vllm": {"model": "m"}, "costs": {"openai": {"models": {"ft:gpt-4o-mini:acme::x": {"input": -1}}}}},
            'costs.openai.models["ft:gpt-4o-mini:acme::x"].input',
        ),
        (
            {"vllm": {"model": "m"}, "policies": {"p.v2": {"default": "base", "fallbacks": ["adapter:x"]}}},
            'policies["p.v2"].fallbacks[0]',
        ),
    ],
)
def test_keys_that_hold_dots_or_spaces_are_quoted(tmp_path: Path, config: dict[str, Any], key: str) -> None:
    problems = _problems(tmp_path, config)
    assert any(line.split(": ", 2)[1] == key for line in problems), problems


def test_one_notation_for_every_key(tmp_path: Path) -> None:
    """Positions in brackets, wherever the line comes from: the schema, the references, the prices."""
    config = {**BROKEN, "costs": {"openai": {"models": {}}}}
    config["policies"] = {**BROKEN["policies"], "hosted": {"default": "base", "fallbacks": ["openai:no-such-model"]}}  # type: ignore[dict-item]
    problems = _problems(tmp_path, config)
    keys = [line.split(": ", 2)[1] for line in problems]
    assert "policies.hosted.fallbacks[0]" in keys
    assert not [key for key in keys if DOTTED_POSITION.search(key)], keys
    assert key_path(("policies", "bot", "rules", 3, "when")) == "policies.bot.rules[3].when"


def test_an_environment_value_that_is_not_json_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_AUTH__KEYS", "not json sk-secret")
    problems = _problems(tmp_path, {"vllm": {"model": "m", "max_resident": 0}, "policies": BROKEN["policies"]})
    assert (
        "environment variable TURNOUT_AUTH__KEYS: auth.keys: the value is not valid JSON "
        "(Expecting value at character 1); this key takes a JSON list" in problems
    )
    assert "sk-secret" not in "\n".join(problems)  # the value may be a secret: never repeated
    assert "EnvSettingsSource" not in "\n".join(problems)
    # ... and the file's own problems are still all there
    assert any("vllm.max_resident" in line for line in problems)
    assert any("policies.support-bot.default: adapter 'ghost'" in line for line in problems)


def test_an_environment_value_of_the_wrong_shape_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_AUTH__KEYS", '{"key": "k"}')
    assert _problems(tmp_path, {"vllm": {"model": "m"}}) == [
        "environment variable TURNOUT_AUTH__KEYS: auth.keys: should be a list, not a mapping"
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("vllm: 3\n", "vllm: should be a mapping of keys, not a number"),
        ("vllm: {model: m}\npolicies: [a]\n", "policies: should be a mapping of keys, not a list"),
        ("vllm: {model: m}\nadapters:\n", "adapters: should be a mapping of keys, not empty"),
        ("vllm: {model: m}\nbase_model: {aliases: x}\n", "base_model.aliases: should be a list, not a string"),
    ],
)
def test_a_value_of_the_wrong_shape_is_named_in_the_files_words(tmp_path: Path, text: str, line: str) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}: {line}"]


def test_a_repeated_key_is_found_beside_an_invalid_one(tmp_path: Path) -> None:
    keys = [{"key": "a"}, {"key_sha256": "x"}, {"key": "a"}]
    problems = _problems(tmp_path, {"vllm": {"model": "m"}, "auth": {"keys": keys}})
    assert [line.split(": ", 1)[1] for line in problems] == [
        "auth.keys[1]: key_sha256 must be 64 lower-case hex digits",
        "auth.keys[2]: the same key as auth.keys[0]",
    ]


def test_an_adapter_declared_in_the_environment_is_declared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_ADAPTERS__GHOST__PATH", str(tmp_path))
    problems = _problems(tmp_path, {**BROKEN, "policies": {"p": {"default": "adapter:ghost"}}})
    assert not [line for line in problems if "ghost" in line], problems


POLICY = {
    "default": {"rag": {"collection": "kb", "generator": "adapter:a"}},
    "fallbacks": ["base", "openai:gpt-4o-mini"],
    "rules": [
        {"name": "r0", "when": {"any": [{"intent": "x"}, {"not": {"keywords": ["y"]}}]}, "target": "adapter:a"},
        {
            "name": "r1",
            "split": {"sticky": "none", "arms": [{"weight": 1, "target": "base"}, {"weight": 2, "target": "rag:kb"}]},
            "fallbacks": ["adapter:b"],
        },
        {"name": "r2", "target": "base"},
    ],
}


def test_the_parts_of_a_policy_as_written_are_those_of_the_validated_policy() -> None:
    """The loader walks an invalid file's policies as written, the model walks valid ones: the same walk."""
    typed = PolicyParts.of(PolicySpec.model_validate(POLICY))
    raw = PolicyParts.of_raw(POLICY)
    assert [at for at, _ in raw.targets] == [at for at, _ in typed.targets]
    assert raw == typed
    assert len(typed.targets) == 8
    assert [at for at, _ in typed.conditions] == [("rules", 0, "when")]


async def test_a_reload_reports_every_problem_and_changes_nothing(
    upstream: FaultyUpstream, adapter_dir: Path, tmp_path: Path
) -> None:
    data: dict[str, Any] = {
        "vllm": {"url": upstream.url, "model": BASE},
        "adapters": {"formal": {"path": str(adapter_dir)}},
        "policies": {"bot": {"default": "adapter:formal"}},
    }
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    async with serve_gateway(config, path) as served:
        data["vllm"]["max_resident"] = 0
        data["policies"]["bot"]["rules"] = [{"name": "r", "when": {"intent": "nope"}, "target": "adapter:ghost"}]
        path.write_text(yaml.safe_dump(data))
        response = await served.http.post("/admin/reload")
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        for problem in [
            "vllm.max_resident: Input should be greater than or equal to 1",
            "policies.bot.rules[0].when: intent 'nope' is not defined under intents",
            "policies.bot.rules[0].target: adapter 'ghost' is not declared under adapters",
        ]:
            assert f"{path}: {problem}" in message
        models = (await served.http.get("/v1/models")).json()["data"]
        assert "bot" in {m["id"] for m in models}


def test_a_configuration_built_in_code_checks_its_references_too(adapter_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"policies\.p\.default: adapter 'ghost' is not declared"):
        gateway_config("http://127.0.0.1:1", adapter_dir, policies={"p": {"default": "adapter:ghost"}})
