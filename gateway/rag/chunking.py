"""Token-aware chunking of document text for retrieval, with overlap between neighbouring chunks.

Chunks are sized in the embedding model's own tokens (``count_tokens`` is injected) because the model
silently cuts off anything longer than it reads, and a cut-off chunk is retrieved for text it was never
embedded from. Text is split into pieces at line breaks and sentence ends so that chunks start and end
where a reader would; pieces are packed greedily and each chunk repeats the last pieces of the one before
(the overlap), so a fact that straddles a boundary is still whole in one of them.

Cost: every piece is counted once and chunk sizes are estimated by adding those counts; each chunk is
then counted once for real, because tokenizers are not exactly additive (a separator can cost a token).
Tokenizer work therefore grows linearly with the text, which matters when ingesting thousands of
documents. Only when the estimate was too low is a chunk shrunk and counted again.

Exact relationship, for every chunk: ``chunk.text == text[chunk.start:chunk.end]``, the text is not empty
and neither starts nor ends with whitespace; ``count_tokens(chunk.text) <= max_tokens``; starts and ends
strictly increase from one chunk to the next; and every non-whitespace character of ``text`` lies in at
least one chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

MIN_MAX_TOKENS = 8
MAX_CHARS_PER_TOKEN = 16  # far above real text (about 4 for English): only degenerate input hits it

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\S+")
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_SENTENCE_END = frozenset(".!?")
_CLOSERS = frozenset("\"')]\u00bb\u201d\u2019")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A slice of the original text: ``text == original[start:end]`` (character offsets)."""

    index: int
    text: str
    start: int
    end: int


def chunk_text(text: str, count_tokens: Callable[[str], int], *, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens, each after the first starting with
    trailing pieces of the previous chunk worth at most ``overlap_tokens`` tokens.

    Raises ``ValueError`` for a budget outside ``max_tokens >= 8`` and ``0 <= overlap_tokens < max_tokens // 2``
    (a larger overlap would make most of every chunk a repeat), or when even one character is over budget.
    """
    _check_budget(max_tokens, overlap_tokens)
    budget = _Budget(text, count_tokens, max_tokens)
    pieces = [piece for start, end in _piece_spans(text) for piece in _fitted_pieces(start, end, budget)]
    groups = _pack(pieces, budget, overlap_tokens)
    spans = [(pieces[first].start, pieces[stop - 1].end) for first, stop in groups]
    spans = [part for span in spans for part in _cap_characters(text, span, max_tokens * MAX_CHARS_PER_TOKEN)]
    return [Chunk(index=i, text=text[start:end], start=start, end=end) for i, (start, end) in enumerate(spans)]


def _cap_characters(text: str, span: tuple[int, int], limit: int) -> list[tuple[int, int]]:
    """Split a span longer than ``limit`` characters into consecutive windows (trimmed of white space).

    Tokenizers read an overlong "word" (a base64 blob, a hash list) as a single unknown token, so a
    chunk within the token budget can still be megabytes of text; this bounds what a chunk puts into a
    prompt whatever the tokenizer says."""
    start, end = span
    if end - start <= limit:
        return [span]
    parts = []
    for left in range(start, end, limit):
        right = min(left + limit, end)
        while left < right and text[left].isspace():
            left += 1
        while right > left and text[right - 1].isspace():
            right -= 1
        if left < right:
            parts.append((left, right))
    return parts


def _check_budget(max_tokens: int, overlap_tokens: int) -> None:
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(f"max_tokens must be at least {MIN_MAX_TOKENS}, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens // 2:
        raise ValueError(
            f"overlap_tokens must be at least 0 and less than max_tokens // 2 ({max_tokens // 2}), got {overlap_tokens}"
        )


@dataclass(frozen=True, slots=True)
class _Piece:
    """A span of the text that is never split further, and what it adds to a chunk in tokens."""

    start: int
    end: int
    tokens: int


class _Budget:
    """The text, its tokenizer and the limit, so every helper agrees on what "fits" means.

    ``overhead`` is what the tokenizer counts for no text at all (special tokens, if it adds them). It is
    taken off each piece's count and added once per chunk; otherwise a chunk of many short pieces would
    be estimated far over its real size and end up much smaller than the budget allows.
    """

    def __init__(self, text: str, count_tokens: Callable[[str], int], max_tokens: int) -> None:
        self.text = text
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overhead = max(count_tokens(""), 0) if text.strip() else 0

    def count(self, start: int, end: int) -> int:
        return self.count_tokens(self.text[start:end])

    def fits(self, start: int, end: int) -> bool:
        return self.count(start, end) <= self.max_tokens

    def piece(self, start: int, end: int, counted: int) -> _Piece:
        return _Piece(start, end, max(counted - self.overhead, 0))


# --- pieces --------------------------------------------------------------------------------------------


def _piece_spans(text: str) -> Iterator[tuple[int, int]]:
    """Spans between line breaks and sentence ends, without surrounding whitespace.

    Whitespace runs are found with one linear scan and then classified, rather than matched with a
    pattern like ``\\s*\\n\\s*`` that backtracks quadratically over long runs of spaces.
    """
    start = 0
    for gap in _WHITESPACE.finditer(text):
        if _is_boundary(text, gap.start(), gap.end()):
            if gap.start() > start:
                yield start, gap.start()
            start = gap.end()
    if start < len(text):
        yield start, len(text)


def _is_boundary(text: str, start: int, end: int) -> bool:
    """Whitespace at either end of the text, containing a line break, or after a sentence's last mark."""
    if start == 0 or end == len(text) or _LINE_BREAK.search(text, start, end):
        return True
    before = text[start - 1]
    if before in _CLOSERS and start >= 2:
        before = text[start - 2]  # `He said "stop." Then` ends a sentence too
    return before in _SENTENCE_END


def _fitted_pieces(start: int, end: int, budget: _Budget) -> list[_Piece]:
    """The span as one piece when it fits; otherwise its words (and pieces of any word that alone is too big).

    Packing those words gives windows of whole words that each fit, and because the words are separate
    pieces, neighbouring windows inside one long sentence overlap like any other chunks.
    """
    counted = budget.count(start, end)
    if counted <= budget.max_tokens:
        return [budget.piece(start, end, counted)]
    words = [(m.start(), m.end()) for m in _WORD.finditer(budget.text, start, end)]
    if len(words) == 1:
        return _character_windows(start, end, budget)
    return [piece for word_start, word_end in words for piece in _fitted_pieces(word_start, word_end, budget)]


def _character_windows(start: int, end: int, budget: _Budget) -> list[_Piece]:
    """Consecutive slices of one huge word, each the longest that fits."""
    windows: list[_Piece] = []
    while start < end:
        stop, counted = _longest_fitting_prefix(start, end, budget)
        windows.append(budget.piece(start, stop, counted))
        start = stop
    return windows


def _longest_fitting_prefix(start: int, end: int, budget: _Budget) -> tuple[int, int]:
    """Galloping then binary search: O(log n) counts, each over at most twice the final window."""
    counted = budget.count(start, start + 1)
    if counted > budget.max_tokens:
        raise ValueError(f"a single character counts {counted} tokens, more than max_tokens ({budget.max_tokens})")
    good, bad = start + 1, end + 1
    while good < end and bad > end:
        probe = min(end, start + 2 * (good - start))
        probe_count = budget.count(start, probe)
        if probe_count <= budget.max_tokens:
            good, counted = probe, probe_count
        else:
            bad = probe
    while bad - good > 1 and good < end:
        middle = (good + bad) // 2
        middle_count = budget.count(start, middle)
        if middle_count <= budget.max_tokens:
            good, counted = middle, middle_count
        else:
            bad = middle
    return good, counted


# --- packing -------------------------------------------------------------------------------------------


def _pack(pieces: Sequence[_Piece], budget: _Budget, overlap_tokens: int) -> list[tuple[int, int]]:
    """Greedy packing into ranges ``[first, stop)`` of piece indexes, one per chunk.

    ``fresh`` is the first piece not yet in any chunk; pieces from ``first`` to ``fresh`` are the overlap
    carried over from the previous chunk. Every chunk takes at least one fresh piece, so this ends.
    """
    sums = [0, *accumulate(piece.tokens for piece in pieces)]

    def estimate(first: int, stop: int) -> int:
        return budget.overhead + sums[stop] - sums[first]

    groups: list[tuple[int, int]] = []
    first = fresh = 0
    while fresh < len(pieces):
        while first < fresh and estimate(first, fresh + 1) > budget.max_tokens:
            first += 1  # drop overlap until the next fresh piece fits beside it
        stop = fresh + 1
        while stop < len(pieces) and estimate(first, stop + 1) <= budget.max_tokens:
            stop += 1
        first, stop = _shrink_to_fit(pieces, budget, first, fresh, stop)
        groups.append((first, stop))
        fresh = stop
        first = _overlap_start(sums, first, stop, overlap_tokens)
    return groups


def _shrink_to_fit(pieces: Sequence[_Piece], budget: _Budget, first: int, fresh: int, stop: int) -> tuple[int, int]:
    """Check a chunk with one real count; when the estimate was low, give back fresh pieces, then overlap.

    A chunk of a single piece needs no check: every piece was counted on its own and fits.
    """
    while stop - first > 1 and not budget.fits(pieces[first].start, pieces[stop - 1].end):
        if stop - 1 > fresh:
            stop -= 1
        else:
            first += 1
    return first, stop


def _overlap_start(sums: Sequence[int], first: int, stop: int, overlap_tokens: int) -> int:
    """The first of the trailing pieces of ``[first, stop)`` worth at most ``overlap_tokens``; never all of them."""
    if overlap_tokens == 0:
        return stop
    start = stop
    while start - 1 > first and sums[stop] - sums[start - 1] <= overlap_tokens:
        start -= 1
    return start
