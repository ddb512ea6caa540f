"""The README's runnable examples, read from the README itself: what the demo prints and what the tests run.

An example is a fenced ``bash`` or ``python`` block right after a ``<!-- example -->`` line. A line
``# → TEXT`` in it (alone, or at the end of a command) says what the block's output contains. An
excerpt is a fenced block right after ``<!-- excerpt: PATH -->``: it must appear, as it is, in the file
at PATH (relative to the repository). One source for all three: the README a newcomer pastes from, the
banner ``make demo`` prints, and the test that runs them both against the demo stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"

_EXAMPLE = re.compile(r"^<!-- example -->\n```(bash|python)\n(.*?)^```$", re.M | re.S)
_EXCERPT = re.compile(r"^<!-- excerpt: (\S+) -->\n```\w*\n(.*?)^```$", re.M | re.S)
_EXPECTED = re.compile(r"#\s*→\s*(.+?)\s*$")
_SECTION = re.compile(r"^## (.+)$", re.M)


@dataclass(frozen=True, slots=True)
class Example:
    language: str  # "bash" or "python"
    code: str
    expected: tuple[str, ...]  # what the output contains
    line: int  # where the block starts in the README
    section: str  # the README section it belongs to

    def where(self) -> str:
        return f"README.md:{self.line} ({self.section})"


@dataclass(frozen=True, slots=True)
class Excerpt:
    path: str
    text: str
    line: int


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _section_at(text: str, offset: int) -> str:
    found = [m.group(1) for m in _SECTION.finditer(text, 0, offset)]
    return found[-1] if found else ""


def examples(text: str | None = None) -> list[Example]:
    """Every runnable example of the README, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = []
    for match in _EXAMPLE.finditer(text):
        code = match.group(2)
        expected = tuple(m.group(1) for line in code.splitlines() if (m := _EXPECTED.search(line)))
        found.append(
            Example(match.group(1), code, expected, _line_of(text, match.start()), _section_at(text, match.start()))
        )
    return found


def excerpts(text: str | None = None) -> list[Excerpt]:
    """Every block the README quotes from a file of the repository."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [Excerpt(m.group(1), m.group(2), _line_of(text, m.start())) for m in _EXCERPT.finditer(text)]


__all__ = ["README", "REPO_ROOT", "Example", "Excerpt", "examples", "excerpts"]
