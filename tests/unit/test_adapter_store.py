"""The adapter store: content-addressed immutable versions, a served name that points at one, and pushes
that never leave half an adapter where a replica could read it. Real files in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.adapters.store import AdapterStore, Alias, StoreError, content_version, version_name
from gateway.cli import app
from tests.support.faulty_upstream import BASE, MAX_RANK
from tests.support.inprocess import write_adapter

runner = CliRunner()


def _adapter(root: Path, name: str, *, rank: int = 4, extra: bytes = b"") -> Path:
    path = write_adapter(root / name, rank=rank)
    if extra:
        (path / "notes.txt").write_bytes(extra)
    return path


def test_the_version_is_the_content_wherever_the_files_are(tmp_path: Path) -> None:
    one = _adapter(tmp_path, "one")
    copy = tmp_path / "copy"
    shutil.copytree(one, copy)
    assert content_version(one) == content_version(copy)
    assert content_version(one).startswith("sha256-")
    assert len(content_version(one)) == len("sha256-") + 12
    (copy / "adapter_config.json").write_text((copy / "adapter_config.json").read_text() + " ")
    assert content_version(copy) != content_version(one)


def test_file_names_count_not_only_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_bytes(b"12")
    (b / "x1").write_bytes(b"2")
    assert content_version(a) != content_version(b)


def test_a_push_stores_an_immutable_version_named_as_vllm_will_know_it(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    source = _adapter(tmp_path, "src")
    version, new = store.push("formal", source)
    assert new
    stored = store.path_of("formal", version)
    assert stored.name == version_name("formal", version) == f"formal@{version}"
    assert content_version(stored) == version
    assert all(not (p.stat().st_mode & stat.S_IWUSR) for p in stored.rglob("*") if p.is_file())
    assert store.push("formal", source) == (version, False)  # the same files: nothing copied again
    assert store.versions("formal") == [version]
    assert not any((store.root / ".incoming").iterdir())


def test_activate_and_rollback_move_the_served_name(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    first, _ = store.push("formal", _adapter(tmp_path, "v1"))
    second, _ = store.push("formal", _adapter(tmp_path, "v2", extra=b"retrained"))
    assert store.alias("formal") is None
    with pytest.raises(StoreError, match="no active version"):
        store.current("formal")
    assert store.activate("formal", first) == Alias(first, ())
    assert store.activate("formal", second) == Alias(second, (first,))
    assert store.current("formal") == store.path_of("formal", second)
    assert store.rollback("formal") == Alias(first, ())
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("formal")
    with pytest.raises(StoreError, match="no version sha256-000000000000"):
        store.activate("formal", "sha256-000000000000")
    assert sorted(store.versions("formal")) == sorted([first, second])


def test_a_copy_that_does_not_match_its_source_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AdapterStore(tmp_path / "store")
    source = _adapter(tmp_path, "src")

    real_copy = shutil.copytree

    def corrupting_copy(src: Any, dst: Any, **kwargs: Any) -> Any:
        real_copy(src, dst, **kwargs)
        (Path(dst) / "adapter_config.json").write_text("{}")  # a disk that lost a write
        return dst

    monkeypatch.setattr("gateway.adapters.store.shutil.copytree", corrupting_copy)
    with pytest.raises(StoreError, match="does not match"):
        store.push("formal", source)
    assert [p.name for p in store.root.iterdir() if not p.name.startswith(".")] == []
    assert not any((store.root / ".incoming").iterdir())


def test_an_alias_file_is_replaced_whole(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    first, _ = store.push("formal", _adapter(tmp_path, "v1"))
    store.activate("formal", first)
    aliases = store.root / ".aliases"
    assert sorted(p.name for p in aliases.iterdir()) == ["formal.json"]  # no temporary file left behind
    assert json.loads((aliases / "formal.json").read_text()) == {"current": first, "history": []}


# --- the command line ------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    config = {
        "vllm": {"url": "http://127.0.0.1:9", "model": BASE, "max_lora_rank": MAX_RANK},
        "adapter_store": {"path": "store"},
    }
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "100"})


def test_push_versions_rollback_from_the_command_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = _run("adapters", "push", "formal", str(_adapter(tmp_path, "v1")), "--config", str(config))
    assert first.exit_code == 0, first.output
    assert "now points at it" in first.output
    second = _run("adapters", "push", "formal", str(_adapter(tmp_path, "v2", extra=b"x")), "--config", str(config))
    assert second.exit_code == 0, second.output
    listed = _run("adapters", "versions", "formal", "--config", str(config), "--json")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert len(data["versions"]) == 2
    assert data["current"] == data["versions"][-1]
    back = _run("adapters", "rollback", "formal", "--config", str(config))
    assert back.exit_code == 0, back.output
    assert f"formal@{data['versions'][0]}" in back.output
    again = _run("adapters", "activate", "formal", f"formal@{data['versions'][1]}", "--config", str(config))
    assert again.exit_code == 0, again.output
    assert AdapterStore(tmp_path / "store").alias("formal") == Alias(data["versions"][1], (data["versions"][0],))


def test_an_invalid_adapter_is_refused_with_the_reason_and_nothing_is_stored(tmp_path: Path) -> None:
    config = _config(tmp_path)
    too_big = _adapter(tmp_path, "big", rank=MAX_RANK * 4)
    result = _run("adapters", "push", "formal", str(too_big), "--config", str(config))
    assert result.exit_code == 1
    assert "not stored" in result.output
    assert f"exceeds the server's max LoRA rank {MAX_RANK}" in result.output
    store = tmp_path / "store"
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == []


def test_without_a_store_the_commands_say_so(tmp_path: Path) -> None:
    config = tmp_path / "bare.yaml"
    config.write_text(yaml.safe_dump({"vllm": {"model": BASE}}))
    result = _run("adapters", "versions", "formal", "--config", str(config))
    assert result.exit_code == 2
    assert "adapter_store.path is not set" in result.output
    missing = _run("adapters", "rollback", "formal", "--config", str(_config(tmp_path)))
    assert missing.exit_code == 1
    assert "no earlier version" in missing.output


def test_store_paths_are_relative_to_the_configuration(tmp_path: Path) -> None:
    from gateway.config import load_config

    settings = load_config(_config(tmp_path))
    assert settings.adapter_store.path == (tmp_path / "store").resolve()
    assert os.path.isabs(str(settings.adapter_store.path))
