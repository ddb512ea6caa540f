"""Configuration loading: every problem names the file (or variable), the key and what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults_and_relative_paths_resolve(tmp_path: Path) -> None:
    (tmp_path / "adapters" / "a").mkdir(parents=True)
    path = _write(tmp_path, "vllm:\n  model: m\nadapters:\n  a:\n    path: adapters/a\n")
    config = load_config(path)
    assert config.server.port == 8080
    assert config.vllm.url == "http://127.0.0.1:8000"
    assert config.base_model_name == "m"
    assert config.adapters["a"].path == (tmp_path / "adapters" / "a").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm:\n  model: m\n  max_resident: 0\n", "vllm.max_resident: Input should be greater than or equal to 1"),
        ("vllm:\n  model: m\n  bogus: 1\n", "vllm.bogus: unknown key"),
        ("vllm:\n  url: ftp://x\n  model: m\n", "vllm.url: 'ftp://x' is not an http(s) URL"),
        ("server:\n  port: 8080\n", "vllm: required key is missing"),
        ("vllm:\n  model: m\nadapters:\n  a: {}\n", "adapters.a: give exactly one of path (a directory) and store"),
        ("vllm:\n  model: m\nadapters:\n  'bad name': {path: x}\n", "'bad name' is not a valid model name"),
        ("vllm:\n  model: m\nadapters:\n  m: {path: x}\n", "adapters.m: the name is also the base model's name"),
        ("vllm:\n  model: [m\n", "invalid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("vllm:\n  model: m\nbase_model:\n  path: nowhere\n", "base_model.path:"),
        ("vllm:\n  model: m\n1: x\n", "top-level keys must be section names, not 1"),
        ("vllm:\n  model: m\nembeddings:\n  model: no-such-dir\n", "embeddings.model: "),
        (
            "vllm:\n  model: m\npolicies:\n  p: {default: base, rules: [{name: r, when: {intent: abstain}, "
            "target: base}]}\n",
            "policies.p.rules[0].when: intent 'abstain' needs intents",
        ),
    ],
)
def test_problems_name_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in caught.value.problems), (
        caught.value.problems
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "vllm:\n  model: m\n  max_resident: 0\n  bogus: 1\nserver:\n  port: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 3


def test_environment_overrides_the_file_and_is_named_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "vllm:\n  model: m\n  url: http://file:1\n")
    monkeypatch.setenv("TURNOUT_VLLM__URL", "http://env:2")
    monkeypatch.setenv("TURNOUT_VLLM__API_KEY", "sk-secret")
    config = load_config(path)
    assert config.vllm.url == "http://env:2"
    assert config.vllm.api_key is not None
    assert config.vllm.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(config)
    monkeypatch.setenv("TURNOUT_VLLM__URL", "nonsense")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "environment variable TURNOUT_VLLM__URL: vllm.url: 'nonsense' is not an http(s) URL such as "
        "http://127.0.0.1:8000"
    ]


def test_unparsable_base_model_config_and_environment_json_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{broken")
    path = _write(tmp_path, "vllm:\n  model: m\nbase_model:\n  path: model\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "base_model.path:" in caught.value.problems[0]
    assert "is not valid JSON" in caught.value.problems[0]
    monkeypatch.setenv("TURNOUT_ADAPTERS", "{not json")
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, "vllm:\n  model: m\n"))
    assert caught.value.problems == [
        "environment variable TURNOUT_ADAPTERS: adapters: the value is not valid JSON (Expecting property name "
        "enclosed in double quotes at character 2); this key takes a JSON object"
    ]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read the file" in caught.value.problems[0]


def _turnout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True)


def test_cli_schema_and_check(tmp_path: Path) -> None:
    schema = _turnout("config", "schema")
    assert schema.returncode == 0
    properties = json.loads(schema.stdout)["properties"]
    assert {"server", "vllm", "base_model", "adapters"} <= set(properties)

    bad = _write(tmp_path, "vllm:\n  model: m\n  max_resident: -1\n")
    result = _turnout("config", "check", str(bad))
    assert result.returncode == 2
    assert f"{bad}: vllm.max_resident:" in result.stderr
    assert "Traceback" not in result.stderr

    result = _turnout("serve", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: vllm.max_resident:" in result.stderr

    good = _write(tmp_path, "vllm:\n  model: m\n")
    result = _turnout("config", "check", str(good))
    assert result.returncode == 0, result.stderr


POLICY_BASE = """
vllm: {model: m}
adapters:
  a: {path: a}
intents:
  billing: {examples: [refund please], threshold: 0.5}
"""


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ("p: {default: adapter:zz}", "policies.p.default: adapter 'zz' is not declared under adapters"),
        (
            "p: {default: base, rules: [{name: r, when: {intent: nope}, target: base}]}",
            "policies.p.rules[0].when: intent 'nope' is not defined under intents",
        ),
        ("p: {default: base, fallbacks: [rag:docs+adapter:q]}", "policies.p.fallbacks[0]: adapter 'q' is not declared"),
        ("a: {default: base}", "policies.a: the name is also a model or adapter name"),
        ("p: {default: rag:nowhere}", "policies.p.default: collection 'nowhere' is not declared under rag.collections"),
        (
            "p: {default: {rag: {collection: kb, on_empty: next_rule}}}\nrag: {collections: {kb: {}}}",
            "policies.p.default: on_empty next_rule needs a next rule",
        ),
        ("p: {default: base}\nrag: {collections: {'kb:v2': {}}}", "'kb:v2' is not a collection name"),
        ("p: {default: 'gpu:1'}", "policies.p.default: 'gpu:1': unknown target kind 'gpu'"),
    ],
)
def test_policy_references_are_checked(tmp_path: Path, policies: str, expected: str) -> None:
    path = _write(tmp_path, POLICY_BASE + "policies:\n  " + policies + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in caught.value.problems), (
        caught.value.problems
    )


def test_a_valid_policy_loads(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        POLICY_BASE + "policies:\n  p: {default: adapter:a, rules: [{name: r, when: "
        "{intent: billing}, target: base}]}\n",
    )
    assert list(load_config(path).policies) == ["p"]
