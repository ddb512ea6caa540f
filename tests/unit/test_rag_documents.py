"""Loading documents for retrieval: each format, stable ids and hashes, and failures that never stop a batch."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from gateway.rag.documents import (
    SUPPORTED_SUFFIXES,
    Document,
    LoadFailure,
    document_from_mapping,
    load_path,
    make_document,
)

MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z


def _write(path: Path, content: str | bytes, *, mtime: int = MTIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def _load(path: Path) -> list[Document | LoadFailure]:
    return list(load_path(path))


def _one_document(path: Path) -> Document:
    [result] = _load(path)
    assert isinstance(result, Document), result
    return result


def _one_failure(path: Path) -> LoadFailure:
    [result] = _load(path)
    assert isinstance(result, LoadFailure), result
    return result


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})".encode("latin-1")


def _pdf(pages: list[str], *, title: str | None = None) -> bytes:
    """A minimal real PDF: one Helvetica font, one content stream per page, and a correct xref table."""
    page_ids = [5 + 2 * i for i in range(len(pages))]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % i for i in page_ids) + b"] /Count %d >>" % len(pages),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: b"<< /Title " + _pdf_string(title or "") + b" >>",
    }
    for page_id, text in zip(page_ids, pages, strict=True):
        content = b"BT /F1 12 Tf 72 720 Td " + _pdf_string(text) + b" Tj ET"
        objects[page_id] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"
    out = bytearray(b"%PDF-1.4\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n" % size + b"0000000000 65535 f \n"
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, size))
    info = b" /Info 4 0 R" if title is not None else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (size, info, xref)
    return bytes(out)


def _encrypted(pdf: bytes, *, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# --- Markdown and text ---------------------------------------------------------------------------------


def test_markdown_keeps_text_and_takes_title_id_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Intro line\n\n# The Guide ##\n\nBody *as is*.\n"
    _write(tmp_path / "docs" / "guide.md", text)
    monkeypatch.chdir(tmp_path)
    doc = _one_document(Path("docs/guide.md"))
    assert doc.text == text
    assert doc.title == "The Guide"
    assert doc.id == doc.source == "docs/guide.md"
    assert doc.url is None
    assert doc.updated_at == "2023-11-14T22:13:20+00:00"
    assert len(doc.content_hash) == 64
    assert int(doc.content_hash, 16) >= 0


def test_markdown_title_ignores_headings_inside_code_fences(tmp_path: Path) -> None:
    text = "```bash\n# install it\npip install x\n```\n~~~\n# not this\n~~~\n## Second level\n#   Real title  \n"
    doc = _one_document(_write(tmp_path / "a.markdown", text))
    assert doc.title == "Real title"


def test_text_without_heading_is_titled_by_its_stem(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "release-notes.txt", "#hashtag is not a heading\nplain\n"))
    assert doc.title == "release-notes"


def test_byte_order_mark_is_not_part_of_the_text(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "bom.text", b"\xef\xbb\xbf# Title\nbody"))
    assert doc.text == "# Title\nbody"
    assert doc.title == "Title"


def test_invalid_utf8_is_a_failure(tmp_path: Path) -> None:
    failure = _one_failure(_write(tmp_path / "bad.md", b"fine\n\xff\xfe broken"))
    assert failure.source == (tmp_path / "bad.md").as_posix()
    assert "UTF-8" in failure.reason


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_empty_file_is_a_failure(tmp_path: Path, content: str) -> None:
    assert _one_failure(_write(tmp_path / "blank.md", content)).reason == "empty"


# --- HTML ----------------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html><head>
  <title>  Page
     Title </title>
  <link rel="stylesheet" href="/s.css">
  <link rel="canonical" href=" https://example.com/page ">
  <style>body { color: red }</style>
</head>
<body>
  <script>var hidden = 1;</script>
  <noscript>enable scripts</noscript>
  <!-- a comment -->
  <h1>Main   heading</h1>
  <p>First
     paragraph with <b>bold</b> <i>words</i>.</p>
  <div><p>Nested</p>tail text</div>
  <ul><li>one</li><li>two</li></ul>
  <table><tr><td>cell a</td><td>cell b</td></tr></table>
  line<br>break
</body></html>
"""


def test_html_text_title_and_canonical_url(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "page.html", HTML))
    assert doc.title == "Page Title"
    assert doc.url == "https://example.com/page"
    assert doc.text.split("\n") == [
        "Main heading",
        "First paragraph with bold words.",
        "Nested",
        "tail text",
        "one",
        "two",
        "cell a cell b",
        "line",
        "break",
    ]
    for hidden in ("hidden", "enable scripts", "color", "comment"):
        assert hidden not in doc.text


def test_html_title_falls_back_to_h1_then_stem(tmp_path: Path) -> None:
    with_h1 = _one_document(_write(tmp_path / "a.htm", "<body><h1>Heading <em>one</em></h1><p>x</p></body>"))
    fragment = _one_document(_write(tmp_path / "b.htm", "<p>just a fragment</p>"))
    assert with_h1.title == "Heading one"
    assert (fragment.title, fragment.text, fragment.url) == ("b", "just a fragment", None)


def test_html_keeps_line_structure_of_pre(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "code.html", "<pre>def f():\n    return   1\n</pre><p>after</p>"))
    assert doc.text == "def f():\nreturn 1\nafter"


def test_html_in_a_declared_legacy_charset_is_decoded(tmp_path: Path) -> None:
    html = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>cr\xe8me</p></body></html>'
    doc = _one_document(_write(tmp_path / "latin.html", html.encode("latin-1")))
    assert (doc.title, doc.text) == ("Café", "crème")


def test_html_with_only_scripts_is_empty(tmp_path: Path) -> None:
    failure = _one_failure(_write(tmp_path / "app.html", "<html><body><script>app()</script></body></html>"))
    assert failure.reason == "empty"


def test_deeply_nested_html_does_not_exhaust_the_stack(tmp_path: Path) -> None:
    depth = 5000
    doc = _one_document(_write(tmp_path / "deep.html", "<div>" * depth + "core" + "</div>" * depth))
    assert doc.text == "core"


# --- PDF -----------------------------------------------------------------------------------------------


def test_handmade_pdf_is_valid(tmp_path: Path) -> None:
    reader = PdfReader(io.BytesIO(_pdf(["Hello"], title="T")), strict=True)
    assert len(reader.pages) == 1


def test_pdf_text_and_metadata_title(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "report.pdf", _pdf(["Quarterly revenue grew (a lot)"], title="Q3 Report")))
    assert doc.text == "Quarterly revenue grew (a lot)"
    assert doc.title == "Q3 Report"
    assert doc.id == (tmp_path / "report.pdf").as_posix()


def test_pdf_pages_are_joined_with_blank_lines_and_title_falls_back_to_stem(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "two-pages.pdf", _pdf(["Page one text", "Page two text"])))
    assert doc.text == "Page one text\n\nPage two text"
    assert doc.title == "two-pages"


@pytest.mark.parametrize(
    "content",
    [b"%PDF-1.4\nthis is not a pdf at all", b"", b"hello"],
    ids=["garbage", "zero-bytes", "not-pdf"],
)
def test_broken_pdf_is_a_failure(tmp_path: Path, content: bytes) -> None:
    failure = _one_failure(_write(tmp_path / "broken.pdf", content))
    assert failure.reason.startswith("cannot read PDF")


def test_truncated_pdf_never_raises(tmp_path: Path) -> None:
    pdf = _pdf(["Some text here"])
    results = _load(_write(tmp_path / "cut.pdf", pdf[: len(pdf) // 2]))
    assert len(results) == 1
    assert isinstance(results[0], Document | LoadFailure)


def test_pdf_needing_a_password_is_a_failure(tmp_path: Path) -> None:
    failure = _one_failure(_write(tmp_path / "secret.pdf", _encrypted(_pdf(["classified"]), user_password="pw")))
    assert failure.reason.startswith("encrypted PDF")


def test_pdf_encrypted_without_a_user_password_opens(tmp_path: Path) -> None:
    doc = _one_document(_write(tmp_path / "locked.pdf", _encrypted(_pdf(["readable anyway"]), user_password="")))
    assert doc.text == "readable anyway"


def test_pdf_without_text_is_empty(tmp_path: Path) -> None:
    assert _one_failure(_write(tmp_path / "scan.pdf", _pdf([""]))).reason == "empty"


# --- JSON Lines ----------------------------------------------------------------------------------------


def test_jsonl_records_with_defaults_and_explicit_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        json.dumps({"text": "# Heading\nalpha"}),
        "",
        json.dumps(
            {
                "id": "kb-7",
                "text": "beta",
                "title": " Beta ",
                "source": "https://kb/7",
                "url": "https://kb/7",
                "updated_at": "2024-05-01T10:00:00Z",
                "extra": [1, 2],
            }
        ),
        json.dumps({"id": 42, "text": "gamma", "url": None}),
    ]
    _write(tmp_path / "data" / "kb.jsonl", "\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    first, second, third = _load(Path("data/kb.jsonl"))
    assert isinstance(first, Document)
    assert isinstance(second, Document)
    assert isinstance(third, Document)
    assert (first.id, first.source, first.title, first.updated_at) == (
        "data/kb.jsonl#1",
        "data/kb.jsonl",
        "Heading",
        None,
    )
    assert (second.id, second.title, second.source, second.url) == ("kb-7", "Beta", "https://kb/7", "https://kb/7")
    assert second.updated_at == "2024-05-01T10:00:00Z"
    assert (third.id, third.title, third.text) == ("42", "42", "gamma")


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got an array"),
    ('"text"', "expected a JSON object, got a string"),
    ("null", "expected a JSON object, got null"),
    ('{"title": "no text"}', "'text' is missing"),
    ('{"text": "   "}', "'text' must be a non-empty string"),
    ('{"text": 5}', "'text' must be a non-empty string"),
    ('{"text": "x", "title": 3}', "'title' must be a string"),
    ('{"text": "x", "id": ""}', "'id' must be a non-empty string or an integer"),
    ('{"text": "x", "id": true}', "'id' must be a non-empty string or an integer"),
    ('{"text": "x", "updated_at": "yesterday"}', "'updated_at' must be an ISO 8601"),
    ('{"text": "\\ud800"}', "lone surrogate"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_LINES, ids=[expected for _, expected in BAD_LINES])
def test_bad_jsonl_line_is_a_failure_naming_the_line_and_others_still_load(
    tmp_path: Path, line: str, expected: str
) -> None:
    path = _write(tmp_path / "kb.jsonl", '{"text": "before"}\n' + line + '\n{"text": "after"}\n')
    before, failure, after = _load(path)
    assert isinstance(before, Document)
    assert isinstance(after, Document)
    assert (before.text, after.text) == ("before", "after")
    assert isinstance(failure, LoadFailure)
    assert failure.source == path.as_posix()
    assert failure.reason.startswith("line 2: ")
    assert expected in failure.reason


def test_jsonl_invalid_utf8_line_and_duplicate_ids(tmp_path: Path) -> None:
    content = b'{"id": "a", "text": "one"}\n{"text": "\xff"}\n{"id": "a", "text": "two"}\n'
    first, bad_bytes, duplicate = _load(_write(tmp_path / "kb.jsonl", content))
    assert isinstance(first, Document)
    assert first.text == "one"
    assert isinstance(bad_bytes, LoadFailure)
    assert bad_bytes.reason.startswith("line 2: not valid UTF-8")
    assert isinstance(duplicate, LoadFailure)
    assert duplicate.reason == "line 3: duplicate id 'a' (first on line 1)"


def test_blank_jsonl_is_empty(tmp_path: Path) -> None:
    assert _one_failure(_write(tmp_path / "none.jsonl", "\n  \n")).reason == "empty"


def test_document_from_mapping_defaults() -> None:
    doc = document_from_mapping({"text": "plain words"}, default_source="api")
    assert (doc.id, doc.source, doc.title, doc.url, doc.updated_at) == ("api", "api", "api", None, None)
    other = document_from_mapping({"text": "plain words"}, default_source="api", default_id="api#2")
    assert (other.id, other.source) == ("api#2", "api")


def test_document_from_mapping_rejects_with_readable_message() -> None:
    with pytest.raises(ValueError, match=r"^'url' must be a string$"):
        document_from_mapping({"text": "x", "url": ["a"]}, default_source="api")


# --- hashes --------------------------------------------------------------------------------------------


def test_touching_a_file_keeps_its_hash_but_editing_changes_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.md", "# A\ntext")
    before = _one_document(path)
    os.utime(path, (MTIME + 3600, MTIME + 3600))
    touched = _one_document(path)
    assert touched.updated_at != before.updated_at
    assert touched.content_hash == before.content_hash
    _write(path, "# A\ntext!")
    assert _one_document(path).content_hash != before.content_hash


def test_title_change_alone_changes_the_hash(tmp_path: Path) -> None:
    a = _one_document(_write(tmp_path / "one" / "a.html", "<title>Old</title><p>same</p>"))
    b = _one_document(_write(tmp_path / "two" / "a.html", "<title>New</title><p>same</p>"))
    assert a.text == b.text
    assert a.content_hash != b.content_hash


@pytest.mark.parametrize(
    "change",
    [{"text": "other"}, {"title": "other"}, {"source": "other"}, {"url": "https://x"}, {"updated_at": "2024-01-02"}],
    ids=lambda change: next(iter(change)),
)
def test_every_stored_field_is_in_the_hash(change: dict[str, str]) -> None:
    base = {"text": "body", "title": "T", "source": "s", "updated_at": "2024-01-01"}
    original = document_from_mapping(base, default_source="d")
    changed = document_from_mapping({**base, **change}, default_source="d")
    assert original.content_hash != changed.content_hash


def test_hash_is_sha256_of_the_stored_fields_and_ignores_mtime_dates() -> None:
    mtime = "2023-11-14T22:13:20+00:00"
    from_file = make_document(id="s", text="t", title="T", source="s", updated_at=mtime, updated_at_from_mtime=True)
    undated = make_document(id="s", text="t", title="T", source="s")
    dated = make_document(id="s", text="t", title="T", source="s", updated_at=mtime)
    expected = hashlib.sha256(json.dumps(["t", "T", "s", None, None], separators=(",", ":")).encode()).hexdigest()
    assert from_file.content_hash == undated.content_hash == expected
    assert dated.content_hash != expected
    assert from_file.updated_at == mtime


def test_field_boundaries_matter_to_the_hash() -> None:
    a = make_document(id="x", text="ab", title="c", source="s")
    b = make_document(id="x", text="a", title="bc", source="s")
    assert a.content_hash != b.content_hash


# --- paths and directories -----------------------------------------------------------------------------


def _tree(root: Path) -> None:
    _write(root / "b.md", "# B\nb")
    _write(root / "a.txt", "a")
    _write(root / "sub" / "c.html", "<p>c</p>")
    _write(root / "sub" / "deeper" / "d.jsonl", '{"text": "d"}\n')
    _write(root / "sub" / "z.pdf", _pdf(["z"]))
    _write(root / "sub" / "image.png", b"\x89PNG")
    _write(root / "sub" / "notes.docx", b"PK")
    _write(root / ".git" / "HEAD.md", "hidden dir")
    _write(root / ".hidden.md", "hidden file")
    _write(root / "UPPER.MD", "upper-case suffix")


def test_directory_walk_is_recursive_sorted_and_skips_hidden_and_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path / "kb")
    monkeypatch.chdir(tmp_path)
    results = _load(Path("kb"))
    assert all(isinstance(r, Document) for r in results)
    assert [r.source for r in results] == [
        "kb/UPPER.MD",
        "kb/a.txt",
        "kb/b.md",
        "kb/sub/c.html",
        "kb/sub/deeper/d.jsonl",
        "kb/sub/z.pdf",
    ]
    assert [r.id for r in results if isinstance(r, Document)][4] == "kb/sub/deeper/d.jsonl#1"


def test_loading_twice_gives_the_same_ids_and_hashes(tmp_path: Path) -> None:
    _tree(tmp_path)
    first = [(r.id, r.content_hash) for r in _load(tmp_path) if isinstance(r, Document)]
    second = [(r.id, r.content_hash) for r in _load(tmp_path) if isinstance(r, Document)]
    assert len(first) == 6
    assert first == second


def test_a_bad_file_in_a_directory_does_not_stop_the_others(tmp_path: Path) -> None:
    _write(tmp_path / "a.md", "ok a")
    _write(tmp_path / "b.pdf", b"broken")
    (tmp_path / "c.md").symlink_to(tmp_path / "missing.md")
    _write(tmp_path / "d.md", "ok d")
    results = _load(tmp_path)
    assert [type(r).__name__ for r in results] == ["Document", "LoadFailure", "LoadFailure", "Document"]
    assert isinstance(results[2], LoadFailure)
    assert results[2].reason == "cannot read: No such file or directory"


def test_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    _write(tmp_path / "docs" / "a.md", "a")
    (tmp_path / "docs" / "loop").symlink_to(tmp_path / "docs")
    assert [r.source for r in _load(tmp_path / "docs")] == [(tmp_path / "docs" / "a.md").as_posix()]


def test_unsupported_file_named_directly_is_a_failure(tmp_path: Path) -> None:
    failure = _one_failure(_write(tmp_path / "report.docx", b"PK"))
    assert failure.reason.startswith("unsupported file type '.docx'; supported: .htm, .html")
    assert _one_failure(_write(tmp_path / "Makefile", "all:")).reason.startswith("unsupported file type (no suffix)")


def test_hidden_file_named_directly_is_loaded(tmp_path: Path) -> None:
    assert _one_document(_write(tmp_path / ".notes.md", "secret")).text == "secret"


def test_missing_path_is_a_failure(tmp_path: Path) -> None:
    failure = _one_failure(tmp_path / "nope")
    assert failure == LoadFailure((tmp_path / "nope").as_posix(), "cannot read: No such file or directory")


def test_fifo_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    assert _one_failure(fifo).reason == "not a regular file"


def test_supported_suffixes() -> None:
    assert {".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf", ".jsonl"} == SUPPORTED_SUFFIXES
