"""The adapter store: immutable, content-addressed adapter versions that every replica can read, and the
served name's pointer to one of them.

Layout under the store's root (a directory locally; a volume every vLLM pod mounts in Kubernetes)::

    formal@sha256-3f9a1c2e4b7d/          one version: the adapter's files, never changed once written
    formal@sha256-81c0d2a95e14/
    .aliases/formal.json                  {"current": "sha256-81c0d2a95e14", "history": ["sha256-3f9a1c2e4b7d"]}
    .incoming/                            copies being written (never read by anyone else)

A version's directory is named as vLLM will know it, ``NAME@sha256-<12 hex>`` of its files' content, so
vLLM's own filesystem resolver (``VLLM_LORA_RESOLVER_CACHE_DIR`` = the store's root) can load any
version by name, and different weights never live under one vLLM name (vLLM has bugs when a name is
reused for other weights; see the notes on fleets). The served name (``formal``) is only an alias,
moved by :meth:`AdapterStore.activate` and :meth:`AdapterStore.rollback`.

Writes leave nothing half-written: a version is copied into ``.incoming``, its hash checked against the
source's, then renamed into place (atomic on one filesystem); an alias file is written to a temporary
name and renamed over the old one.

May import: nothing of the gateway (the command line validates an adapter before pushing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

_ALIASES = ".aliases"
_INCOMING = ".incoming"
_HASH_CHARS = 12


class StoreError(Exception):
    """The store cannot do what was asked (no such adapter or version, nothing to roll back to, a copy
    that does not match its source)."""


@dataclass(frozen=True, slots=True)
class Alias:
    """Which version a served name points at, and the versions it pointed at before (latest last)."""

    current: str
    history: tuple[str, ...] = field(default_factory=tuple)


def content_version(directory: Path) -> str:
    """``sha256-<12 hex>`` of every regular file under ``directory``: their relative paths and bytes, in a
    fixed order, so the same files always give the same version wherever they are copied."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(directory).as_posix().encode()
        digest.update(len(relative).to_bytes(4, "big") + relative)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256-{digest.hexdigest()[:_HASH_CHARS]}"


def version_name(name: str, version: str) -> str:
    """The name vLLM knows a version by (and the store's directory for it)."""
    return f"{name}@{version}"


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, name: str, version: str) -> Path:
        return self.root / version_name(name, version)

    def versions(self, name: str) -> list[str]:
        """The versions stored for ``name``, oldest first (by when they were written)."""
        prefix = f"{name}@"
        found = [p for p in self.root.glob(f"{glob_escape(name)}@sha256-*") if p.is_dir()]
        return [p.name[len(prefix) :] for p in sorted(found, key=lambda p: p.stat().st_mtime_ns)]

    def alias(self, name: str) -> Alias | None:
        """Where ``name`` points, or None when it was never activated."""
        try:
            data = json.loads((self.root / _ALIASES / f"{name}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.root / _ALIASES / name}.json is unreadable: {exc}") from exc
        return Alias(str(data["current"]), tuple(str(v) for v in data.get("history", [])))

    def current(self, name: str) -> Path:
        """The directory of the version ``name`` points at (:class:`StoreError` if none)."""
        alias = self.alias(name)
        if alias is None:
            raise StoreError(f"adapter {name!r} has no active version in the store {self.root}")
        return self.path_of(name, alias.current)

    def push(self, name: str, source: Path) -> tuple[str, bool]:
        """Store ``source`` (already validated) as a version of ``name``; (its version, whether it was new).

        The same files pushed again are the same version and are not copied twice."""
        version = content_version(source)
        target = self.path_of(name, version)
        if target.is_dir():
            if content_version(target) != version:
                raise StoreError(f"{target} does not hold what its name says: remove it and push again")
            return version, False
        incoming = self.root / _INCOMING / f"{name}-{secrets.token_hex(4)}"
        incoming.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(source, incoming, symlinks=False)
            copied = content_version(incoming)
            if copied != version:
                raise StoreError(f"the copy of {source} does not match it ({copied} != {version}): nothing stored")
            _read_only(incoming)
            os.rename(incoming, target)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return version, True

    def activate(self, name: str, version: str) -> Alias:
        """Point ``name`` at ``version`` (stored already); the version it pointed at goes to the history."""
        if not self.path_of(name, version).is_dir():
            raise StoreError(f"adapter {name!r} has no version {version} in the store {self.root}")
        previous = self.alias(name)
        if previous is not None and previous.current == version:
            return previous
        history = (*previous.history, previous.current) if previous is not None else ()
        alias = Alias(version, history)
        self._write_alias(name, alias)
        return alias

    def rollback(self, name: str) -> Alias:
        """Point ``name`` back at the version it pointed at before the current one."""
        previous = self.alias(name)
        if previous is None or not previous.history:
            raise StoreError(f"adapter {name!r} has no earlier version to roll back to")
        alias = Alias(previous.history[-1], previous.history[:-1])
        self._write_alias(name, alias)
        return alias

    def _write_alias(self, name: str, alias: Alias) -> None:
        folder = self.root / _ALIASES
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{name}.{secrets.token_hex(4)}.json"
        temporary.write_text(json.dumps({"current": alias.current, "history": list(alias.history)}), encoding="utf-8")
        os.replace(temporary, folder / f"{name}.json")


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _read_only(directory: Path) -> None:
    """Make a stored version's files read-only: it is immutable by design (its directories stay writable,
    so an operator can still remove a version)."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


__all__ = ["AdapterStore", "Alias", "StoreError", "content_version", "version_name"]
