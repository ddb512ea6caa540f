"""Text from HTML and PDF files, kept apart so that Beautiful Soup and pypdf (slow to import, heavy in
memory) are loaded only by a process that ingests such a file, never by a gateway that only serves."""

from __future__ import annotations

import re
from io import BytesIO

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PageElement, PreformattedString, Tag
from pypdf import PasswordType, PdfReader

from gateway.rag.parsed import Parsed, Unreadable

# --- HTML ----------------------------------------------------------------------------------------------

_SKIPPED_TAGS = frozenset({"script", "style", "noscript", "template", "head", "title"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hgroup", "hr", "html", "legend", "li", "main", "menu", "nav", "ol", "option", "p",
        "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_INLINE_SPACE = re.compile(r"\s+")


def parse_html(data: bytes, stem: str) -> Parsed:
    try:
        soup = BeautifulSoup(_html_markup(data), "html.parser")
    except Exception as exc:  # the parser's failures are not part of its API; any of them means "unusable"
        raise Unreadable(f"cannot parse HTML: {exc}") from exc
    title = _element_text(soup.find("title")) or _element_text(soup.find("h1")) or stem
    return Parsed(_html_text(soup.body or soup), title, _canonical_url(soup))


def _html_markup(data: bytes) -> str | bytes:
    """UTF-8 when it decodes; otherwise the bytes, so Beautiful Soup can honour a declared charset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data


def _element_text(element: object) -> str:
    if not isinstance(element, Tag):
        return ""
    return " ".join(element.get_text(" ").split())


def _canonical_url(soup: BeautifulSoup) -> str | None:
    for link in soup.find_all("link"):
        if not isinstance(link, Tag):
            continue
        rel = link.get("rel")
        rels = rel if isinstance(rel, list) else str(rel or "").split()
        href = link.get("href")
        if "canonical" in (r.lower() for r in rels) and isinstance(href, str) and href.strip():
            return href.strip()
    return None


def _html_text(root: Tag) -> str:
    """Visible text, one line per block element, whitespace collapsed within each line.

    The walk uses an explicit stack rather than recursion, so deeply nested markup cannot exhaust the
    interpreter's stack. A tuple on the stack is a "leaving" marker: the separator a block ends with.
    """
    parts: list[str] = []
    in_pre = 0
    stack: list[PageElement | tuple[str, bool]] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            separator, closes_pre = item
            parts.append(separator)
            in_pre -= closes_pre
        elif isinstance(item, Tag):
            if item.name in _SKIPPED_TAGS:
                continue
            if item.name == "br":
                parts.append("\n")
                continue
            separator = "\n" if item.name in _BLOCK_TAGS else " " if item.name in _CELL_TAGS else ""
            parts.append(separator)
            in_pre += item.name == "pre"
            stack.append((separator, item.name == "pre"))
            stack.extend(reversed(item.contents))
        elif isinstance(item, NavigableString) and not isinstance(item, PreformattedString):
            # Outside <pre>, a newline in the source is just a space; comments and doctypes are skipped.
            parts.append(str(item) if in_pre else _INLINE_SPACE.sub(" ", item))
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


# --- PDF -----------------------------------------------------------------------------------------------


def parse_pdf(data: bytes, stem: str) -> Parsed:
    try:
        reader = PdfReader(BytesIO(data))
        if reader.is_encrypted:
            _unlock(reader)
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = ((reader.metadata.title if reader.metadata else None) or "").strip()
    except Unreadable:
        raise
    except Exception as exc:  # broken PDFs fail in many ways inside pypdf; each means "unusable"
        raise Unreadable(f"cannot read PDF: {str(exc) or type(exc).__name__}") from exc
    return Parsed("\n\n".join(page for page in pages if page), title or stem)


def _unlock(reader: PdfReader) -> None:
    """Open a PDF encrypted with an empty user password (common: only printing or copying is restricted)."""
    try:
        opened = reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception as exc:  # e.g. an unsupported algorithm
        raise Unreadable(f"encrypted PDF: {exc}") from exc
    if not opened:
        raise Unreadable("encrypted PDF: a password is needed")
