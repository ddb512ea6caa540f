"""Documents for retrieval ingestion: files and JSON Lines records turned into text with stable ids.

Loading is meant for batches of mixed, sometimes broken input, so it never raises for a bad file: each
file (or JSON Lines record) that cannot be used becomes a ``LoadFailure`` with a one-line reason, and the
rest still load. Ids are stable across runs (the path as the caller gave it, or the record's own id), so
re-ingesting the same sources replaces documents instead of duplicating them, and ``content_hash`` lets
the ingester skip documents whose stored form would not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.rag.parsed import Parsed, Unreadable

SUPPORTED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf", ".jsonl"})


@dataclass(frozen=True, slots=True)
class Document:
    """One document ready for chunking; build it with ``make_document`` so ``content_hash`` is set."""

    id: str
    text: str
    title: str
    source: str
    url: str | None = None
    updated_at: str | None = None
    content_hash: str = ""


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A source that produced no document, and why (one readable line)."""

    source: str
    reason: str


def content_hash(*, text: str, title: str, source: str, url: str | None, updated_at: str | None) -> str:
    """sha256 of everything stored with a document's chunks, so a metadata-only edit still counts as a change.

    The fields are hashed as one JSON array rather than concatenated, so moving characters from one field
    to the next cannot produce the same hash; ASCII escaping keeps it total (no encoding error is possible).
    """
    payload = json.dumps([text, title, source, url, updated_at], separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def make_document(
    *,
    id: str,
    text: str,
    title: str,
    source: str,
    url: str | None = None,
    updated_at: str | None = None,
    updated_at_from_mtime: bool = False,
) -> Document:
    """Build a ``Document`` with its ``content_hash``.

    An ``updated_at`` read from a file's mtime is left out of the hash: touching a file, checking it out
    again or copying it moves the mtime without changing anything a reader sees, and counting that as a
    change would re-embed every document of a freshly cloned repository. The price is that the stored
    ``updated_at`` of an unchanged file keeps the time it was last really ingested. An ``updated_at``
    given explicitly (a JSON Lines record) is a statement about the content and is hashed.
    """
    hashed_updated_at = None if updated_at_from_mtime else updated_at
    digest = content_hash(text=text, title=title, source=source, url=url, updated_at=hashed_updated_at)
    return Document(id=id, text=text, title=title, source=source, url=url, updated_at=updated_at, content_hash=digest)


def document_from_mapping(obj: Mapping[str, Any], *, default_source: str, default_id: str | None = None) -> Document:
    """Build a document from a record such as one JSON Lines object; raises ``ValueError`` saying what is wrong.

    ``text`` is required and must hold more than whitespace; ``id``, ``title``, ``source``, ``url`` and
    ``updated_at`` are optional (null counts as absent, other keys are ignored). Without an ``id`` the
    document takes ``default_id``, else its source; without a title, its first Markdown heading, else its id.
    """
    text = obj.get("text")
    if text is None:
        raise ValueError("'text' is missing")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string")
    _check_unicode("text", text)
    source = _optional_str(obj, "source") or default_source
    doc_id = _record_id(obj) or default_id or source
    title = _optional_str(obj, "title") or _markdown_title(text) or doc_id
    return make_document(
        id=doc_id,
        text=text,
        title=title,
        source=source,
        url=_optional_str(obj, "url"),
        updated_at=_optional_timestamp(obj),
    )


def load_path(path: Path) -> Iterator[Document | LoadFailure]:
    """Load a file, or every supported file under a directory, in a stable order.

    A directory is walked recursively in name order, skipping hidden entries and, silently, files of
    other types; a file named directly must be of a supported type. Sources and ids keep the form of the
    path given (relative stays relative), so the same call from the same place gives the same ids.
    """
    source = _source_of(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        yield LoadFailure(source, _os_reason(exc))
        return
    if stat.S_ISDIR(mode):
        yield from _walk(path, set())
    elif path.suffix.lower() in SUPPORTED_SUFFIXES:
        yield from _load_file(path, source)
    else:
        yield LoadFailure(source, _unsupported_reason(path))


# --- walking and reading -------------------------------------------------------------------------------


def _source_of(path: Path) -> str:
    """Forward slashes on every platform, so ids do not depend on where ingestion ran."""
    return path.as_posix()


def _os_reason(exc: OSError) -> str:
    return f"cannot read: {exc.strerror or exc}"


def _unsupported_reason(path: Path) -> str:
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    kind = repr(path.suffix) if path.suffix else "(no suffix)"
    return f"unsupported file type {kind}; supported: {supported}"


def _walk(directory: Path, visited: set[Path]) -> Iterator[Document | LoadFailure]:
    """Depth-first in name order; a directory reached twice (a symlink loop) is read once."""
    try:
        real = directory.resolve()
        if real in visited:
            return
        visited.add(real)
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
    except OSError as exc:
        yield LoadFailure(_source_of(directory), _os_reason(exc))
        return
    for name in names:
        child = directory / name
        if _is_dir(child):
            yield from _walk(child, visited)
        elif child.suffix.lower() in SUPPORTED_SUFFIXES:
            yield from _load_file(child, _source_of(child))


def _is_dir(path: Path) -> bool:
    """Follows symlinks; an entry that cannot even be examined is treated as a file (and reported if loaded)."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        return False


def _load_file(path: Path, source: str) -> Iterator[Document | LoadFailure]:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            # Reading a FIFO or a device would block or never end.
            yield LoadFailure(source, "not a regular file")
            return
        data = path.read_bytes()
    except OSError as exc:
        yield LoadFailure(source, _os_reason(exc))
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _load_jsonl(data, source)
        return
    try:
        parsed = _PARSERS[suffix](data, path.stem)
    except Unreadable as exc:
        yield LoadFailure(source, str(exc))
        return
    if not parsed.text.strip():
        yield LoadFailure(source, "empty")
        return
    yield make_document(
        id=source,
        text=parsed.text,
        title=parsed.title,
        source=source,
        url=parsed.url,
        updated_at=datetime.fromtimestamp(info.st_mtime, tz=UTC).isoformat(timespec="seconds"),
        updated_at_from_mtime=True,
    )


# --- Markdown and plain text ---------------------------------------------------------------------------

_ATX_H1 = re.compile(r" {0,3}#[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def _parse_text(data: bytes, stem: str) -> Parsed:
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is encoding, not text
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not valid UTF-8 (byte {exc.start})") from exc
    return Parsed(text, _markdown_title(text) or stem)


def _markdown_title(text: str) -> str | None:
    """The first level-one ATX heading, ignoring fenced code (where ``# ...`` is usually a shell comment)."""
    fence: str | None = None
    for line in text.splitlines():
        if marker := _FENCE.match(line):
            fence = _toggle_fence(fence, marker.group(1))
        elif fence is None and (heading := _ATX_H1.fullmatch(line)) and heading.group(1).strip():
            return heading.group(1).strip()
    return None


def _toggle_fence(open_fence: str | None, marker: str) -> str | None:
    """A fence closes only with the same character, at least as long as the one that opened it."""
    if open_fence is None:
        return marker
    if marker[0] == open_fence[0] and len(marker) >= len(open_fence):
        return None
    return open_fence


# --- HTML and PDF (their parsers are imported only when such a file is ingested) ----------------------


def _parse_html(data: bytes, stem: str) -> Parsed:
    from gateway.rag.formats import parse_html

    return parse_html(data, stem)


def _parse_pdf(data: bytes, stem: str) -> Parsed:
    from gateway.rag.formats import parse_pdf

    return parse_pdf(data, stem)


_PARSERS: dict[str, Callable[[bytes, str], Parsed]] = {
    ".md": _parse_text,
    ".markdown": _parse_text,
    ".txt": _parse_text,
    ".text": _parse_text,
    ".html": _parse_html,
    ".htm": _parse_html,
    ".pdf": _parse_pdf,
}


# --- JSON Lines ----------------------------------------------------------------------------------------


def _load_jsonl(data: bytes, source: str) -> Iterator[Document | LoadFailure]:
    """One document per non-blank line; a bad line is reported with its number and the others still load."""
    if not data.strip():
        yield LoadFailure(source, "empty")
        return
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            document = _jsonl_document(raw, source, number)
        except ValueError as exc:
            yield LoadFailure(source, f"line {number}: {exc}")
            continue
        if document.id in first_line_of:
            # Stores key documents by id: a second record would silently replace the first.
            reason = f"line {number}: duplicate id {document.id!r} (first on line {first_line_of[document.id]})"
            yield LoadFailure(source, reason)
            continue
        first_line_of[document.id] = number
        yield document


def _jsonl_document(raw: bytes, source: str, number: int) -> Document:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte {exc.start})") from exc
    try:
        value = json.loads(line.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError as exc:
        raise ValueError("invalid JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {_json_kind(value)}")
    return document_from_mapping(value, default_source=source, default_id=f"{source}#{number}")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


# --- record fields -------------------------------------------------------------------------------------


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    """A string field, stripped; absent, null and blank all mean "not given"."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    _check_unicode(key, value)
    return value.strip() or None


def _record_id(obj: Mapping[str, Any]) -> str | None:
    """Record ids are often numbers in exports; they are kept as their decimal text."""
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("'id' must be a non-empty string or an integer")
    _check_unicode("id", value)
    return value


def _optional_timestamp(obj: Mapping[str, Any]) -> str | None:
    value = _optional_str(obj, "updated_at")
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"'updated_at' must be an ISO 8601 date or time, got {value!r}") from exc
    return value


def _check_unicode(key: str, value: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which no UTF-8 store or tokenizer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"'{key}' contains invalid Unicode (a lone surrogate)") from exc
