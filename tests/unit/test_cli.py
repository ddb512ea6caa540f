"""The ``turnout`` command line: its version, help that reads as plain text, the exit status a script can
rely on, confirmation before a whole partition goes, and offline listing and deleting without the
embedding model (checked on the modules a real process imported, never on timing)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

import gateway
from gateway.cli import app
from gateway.config.model import RagStoreConfig
from gateway.rag.store import VectorStore
from tests.support.faulty_upstream import BASE, MAX_RANK
from tests.support.inprocess import nowhere, write_adapter

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sentence_transformers", "transformers")
# Runs turnout command lines in one process, then says which heavy modules that process imported.
PROBE = f"""
import json, runpy, sys
codes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["turnout", *argv]
    try:
        runpy.run_module("gateway", run_name="__main__")
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1)
print(json.dumps({{"codes": codes, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""

runner = CliRunner()


def _invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "100"})


def _turnout(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kwargs
    )


# -- version and help ---------------------------------------------------------------------------------


def test_version_is_the_packages() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"turnout {gateway.__version__}\n"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]  # the distribution's version is gateway.__version__
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gateway.__version__"}


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # a group's commands
        yield from _command_paths(sub, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_every_command_is_covered() -> None:
    leaves = {" ".join(p) for p in COMMANDS if len(p) == 2 or p in {("serve",), ("plan",), ("report",)}}
    assert leaves == {
        "serve",
        "plan",
        "report",
        "finetune check",
        "finetune estimate",
        "finetune start",
        "finetune status",
        "adapters check",
        "adapters train",
        "config check",
        "config schema",
        "adapters list",
        "adapters push",
        "adapters versions",
        "adapters activate",
        "adapters rollback",
        "adapters status",
        "route explain",
        "route replay",
        "rag ingest",
        "rag list",
        "rag delete",
    }


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "turnout")
def test_help_is_plain_text(path: tuple[str, ...]) -> None:
    result = _invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Usage:" in text
    for markup in ("``", ":mod:", ":class:", ":func:", ":meth:", "<bool>", "╭", "│"):
        assert markup not in text, f"{markup!r} in the help of {' '.join(path) or 'turnout'}:\n{text}"
    assert re.search(r"^  --help +Show this message and exit\.$", text, re.M), text  # a flag takes no value
    if path in {("serve",), ("plan",), ("report",)} or (len(path) == 2 and path != ("config", "schema")):
        assert "Exit status: 0" in text  # every command that can fail says how


def test_help_says_what_the_tenant_option_really_does() -> None:
    text = " ".join(_invoke("rag", "list", "--help").stdout.split())
    assert "a tenant's API key always uses its own tenant" in text
    assert "Omitted: the API key's tenant, else the shared documents" in text


# -- exit status ------------------------------------------------------------------------------------------


def _config(tmp_path: Path, **sections: Any) -> Path:
    data = {"vllm": {"url": nowhere(), "model": BASE, "max_lora_rank": MAX_RANK}, "server": {"port": 1}, **sections}
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "broken").mkdir()
    return {"good": {"path": str(write_adapter(tmp_path / "good"))}, "broken": {"path": str(tmp_path / "broken")}}


def test_config_check_tells_an_unusable_file_from_an_invalid_adapter(tmp_path: Path, adapters: dict[str, Any]) -> None:
    good = _config(tmp_path, adapters={"good": adapters["good"]})
    assert _invoke("config", "check", str(good)).exit_code == 0

    with_broken = _config(tmp_path, adapters=adapters)
    result = _invoke("config", "check", str(with_broken))
    assert result.exit_code == 1
    assert "adapter 'broken' cannot be served" in result.stderr

    unusable = _config(tmp_path, adapters=adapters, policies={"p": {"default": "adapter:ghost"}})
    result = _invoke("config", "check", str(unusable))
    assert result.exit_code == 2
    assert "policies.p.default: adapter 'ghost' is not declared under adapters" in result.stderr


def test_adapters_list_fails_when_an_adapter_is_invalid_and_says_so(tmp_path: Path, adapters: dict[str, Any]) -> None:
    result = _invoke("adapters", "list", "--config", str(_config(tmp_path, adapters={"good": adapters["good"]})))
    assert result.exit_code == 0, result.output
    assert re.search(r"^good +\? +yes ", result.stdout, re.M)  # vLLM does not answer: residency unknown

    config = str(_config(tmp_path, adapters=adapters))
    result = _invoke("adapters", "list", "--config", config)
    assert result.exit_code == 1
    assert re.search(r"^broken +\? +NO ", result.stdout, re.M)
    assert "turnout: 1 of 2 adapter(s) invalid: broken" in result.stderr
    result = _invoke("adapters", "list", "--config", config, "--json")
    assert result.exit_code == 1
    rows = {row["name"]: row for row in json.loads(result.stdout)["adapters"]}
    assert rows["good"]["problem"] == ""
    assert rows["broken"]["problem"]


def test_route_explain_exit_status(tmp_path: Path) -> None:
    config = str(_config(tmp_path, policies={"bot": {"default": "base"}}))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "bot", "messages": [{"role": "user", "content": "hi"}]}))
    assert _invoke("route", "explain", "-c", config, str(request)).exit_code == 0
    assert _invoke("route", "explain", "-c", config, str(tmp_path / "absent.json")).exit_code == 2
    assert _invoke("route", "explain", "-c", config, str(request), "-H", "no colon").exit_code == 2
    request.write_text(json.dumps({"model": "nobody", "messages": [{"role": "user", "content": "hi"}]}))
    result = _invoke("route", "explain", "-c", config, str(request))
    assert result.exit_code == 1
    assert "nobody" in result.stderr


@pytest.mark.parametrize("command", [["list", "nope"], ["delete", "nope", "doc"], ["ingest", "nope", "."]])
def test_an_undeclared_collection_is_a_usage_error(tmp_path: Path, command: list[str]) -> None:
    config = _config(tmp_path, rag={"store": {"path": str(tmp_path / "q")}, "collections": {"kb": {}}})
    result = _invoke("rag", *command, "--config", str(config))
    assert result.exit_code == 2
    assert "collection 'nope' is not declared under rag.collections (declared: kb)" in result.stderr


def test_without_a_command_the_help_is_shown_as_a_usage_error() -> None:
    assert _invoke().exit_code == 2
    assert _invoke("rag").exit_code == 2


def test_serve_exits_3_when_it_cannot_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _turnout("serve", "--config", str(_config(tmp_path)), "--port", str(port))
    assert result.returncode == 3, result.stderr
    assert "address already in use" in result.stderr.lower()


# -- rag list and delete offline ------------------------------------------------------------------------


@pytest.fixture
async def store_config(tmp_path: Path) -> Path:
    """A store whose partitions hold 4-dimensional vectors (not the configured model's 384): listing and
    deleting must not care, since they never create a partition."""
    store_dir = tmp_path / "q"
    store = VectorStore.open(RagStoreConfig(path=store_dir), dimension=4)
    try:
        for tenant in ("", "acme"):
            await store.ensure_partition("kb", tenant)
            for doc in ("a", "b"):
                manifest = {"content_hash": "h", "title": doc.upper()}
                await store.write_document("kb", tenant, doc, [[1.0, 0, 0, 0]], [{"text": doc}], manifest, 0)
    finally:
        await store.close()
    return _config(tmp_path, rag={"store": {"path": str(store_dir)}, "collections": {"kb": {}}})


def _ids(config: Path, *tenant: str) -> list[str]:
    result = _invoke("rag", "list", "kb", "--config", str(config), *tenant)
    assert result.exit_code == 0, result.output
    return [json.loads(line)["id"] for line in result.stdout.splitlines()]


def test_listing_and_deleting_offline_never_load_the_embedding_model(store_config: Path) -> None:
    config = str(store_config)
    commands = [
        ["rag", "list", "kb", "--config", config],
        ["rag", "delete", "kb", "a", "--config", config],
        ["rag", "delete", "kb", "--config", config, "--tenant", "acme", "--yes"],
    ]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"codes": [0, 0, 0], "heavy": []}, result.stderr
    assert '{"id": "a"' in result.stdout
    assert _ids(store_config) == ["b"]
    assert _ids(store_config, "--tenant", "acme") == []


def test_deleting_one_document_needs_no_confirmation_and_nothing_to_delete_fails(store_config: Path) -> None:
    result = _invoke("rag", "delete", "kb", "a", "--config", str(store_config))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"collection": "kb", "document": "a", "deleted": True}
    result = _invoke("rag", "delete", "kb", "a", "--config", str(store_config))
    assert result.exit_code == 1
    assert "nothing to delete: collection 'kb' has no document 'a' in the shared documents" in result.stderr
    result = _invoke("rag", "delete", "kb", "--config", str(store_config), "--tenant", "nobody", "--yes")
    assert result.exit_code == 1
    assert "no partition for tenant 'nobody'" in result.stderr


def test_deleting_a_partition_without_a_terminal_needs_yes(store_config: Path) -> None:
    result = _invoke("rag", "delete", "kb", "--config", str(store_config))  # the runner's stdin is no terminal
    assert result.exit_code == 2
    assert "stdin is not a terminal" in result.stderr
    assert "pass --yes" in result.stderr
    assert _ids(store_config) == ["a", "b"]
    result = _invoke("rag", "delete", "kb", "--config", str(store_config), "--yes")
    assert result.exit_code == 0, result.output
    assert _ids(store_config) == []


def _answering(answer: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """``turnout ARGS`` with a terminal for stdin, on which ``answer`` is already typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)
        return _turnout(*args, stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)


def test_deleting_a_partition_asks_on_a_terminal(store_config: Path) -> None:
    args = ("rag", "delete", "kb", "--config", str(store_config), "--tenant", "acme")
    declined = _answering(b"n\n", *args)
    assert declined.returncode == 1
    assert "Delete the partition of tenant 'acme' in collection 'kb': 2 document(s)" in declined.stdout
    assert "nothing deleted" in declined.stderr
    assert _ids(store_config, "--tenant", "acme") == ["a", "b"]
    accepted = _answering(b"y\n", *args)
    assert accepted.returncode == 0, accepted.stderr
    assert _ids(store_config, "--tenant", "acme") == []
    assert _ids(store_config) == ["a", "b"]  # the shared partition is another one


def test_a_store_held_elsewhere_is_reported_before_any_slow_work(store_config: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(store_config.read_text())
    holder = VectorStore.open(RagStoreConfig(path=Path(config["rag"]["store"]["path"])))  # as a running gateway does
    try:
        commands = [["rag", "ingest", "kb", str(tmp_path / "absent"), "--config", str(store_config)]]
        result = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
    finally:
        asyncio.run(holder.close())
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"codes": [1], "heavy": []}, result.stderr  # the model was never loaded
    assert "is open in another process" in result.stderr
    assert "no gateway answers at http://127.0.0.1:1" in result.stderr
    assert "--gateway URL" in result.stderr
    assert "absent" not in result.stderr  # and the documents were not even read


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # the client asks the server on opening
def test_a_store_that_fails_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = _config(tmp_path, rag={"store": {"url": nowhere()}, "collections": {"kb": {}}})
    result = _invoke("rag", "list", "kb", "--config", str(config))
    for thread in threading.enumerate():  # the client's version check warns from its own thread: let it, here
        if "_check_compatibility" in thread.name:
            thread.join(timeout=30)
    assert result.exit_code == 1
    assert result.stderr.startswith("turnout: the vector store at http://127.0.0.1:")
    assert "Traceback" not in result.output
