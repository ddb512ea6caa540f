"""What a file parser gives the document loader: the text it found, or why it found none.

Shared by :mod:`gateway.rag.documents` (plain text, and the loader) and :mod:`gateway.rag.formats`
(HTML and PDF, imported only when such a file is ingested), so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass


class Unreadable(Exception):
    """A file's content cannot be turned into a document; the message is the failure's reason."""


@dataclass(frozen=True, slots=True)
class Parsed:
    text: str
    title: str
    url: str | None = None


__all__ = ["Parsed", "Unreadable"]
