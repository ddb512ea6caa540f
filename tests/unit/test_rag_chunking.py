"""Token-aware chunking: budgets, overlap, coverage of every word, exact offsets, and linear tokenizer work."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rag.chunking import MAX_CHARS_PER_TOKEN, Chunk, chunk_text

Counter = Callable[[str], int]


def words(text: str) -> int:
    """A whitespace tokenizer: additive, no special tokens."""
    return len(text.split())


def with_specials(text: str) -> int:
    """Like a model tokenizer that adds [CLS] and [SEP] to every call."""
    return len(text.split()) + 2


def newline_costs(text: str) -> int:
    """Not additive: line breaks cost a token each, so summing pieces underestimates a chunk."""
    return len(text.split()) + text.count("\n")


def characters(text: str) -> int:
    """Long words cost more than one token, so a single word can be over budget."""
    return sum(1 + len(word) // 4 for word in text.split())


def check_invariants(text: str, chunks: list[Chunk], count: Counter, max_tokens: int) -> None:
    """Everything the module promises about any result."""
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text
        assert chunk.text == chunk.text.strip()
        assert count(chunk.text) <= max_tokens
    for before, after in pairwise(chunks):
        assert before.start < after.start
        assert before.end < after.end
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    uncovered = [i for i, char in enumerate(text) if not char.isspace() and not covered[i]]
    assert uncovered == []


# --- arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens"),
    [(7, 0), (0, 0), (-5, 0), (8, -1), (8, 4), (100, 50), (101, 50)],
)
def test_budget_is_validated(max_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("some text", words, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(8, 0), (8, 3), (100, 49), (101, 49)])
def test_edge_budgets_are_accepted(max_tokens: int, overlap_tokens: int) -> None:
    assert len(chunk_text("some text", words, max_tokens=max_tokens, overlap_tokens=overlap_tokens)) == 1


def test_a_character_over_budget_is_an_error() -> None:
    with pytest.raises(ValueError, match="single character"):
        chunk_text("x", lambda text: 10 * len(text), max_tokens=8, overlap_tokens=0)


# --- shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_blank_text_has_no_chunks(text: str) -> None:
    assert chunk_text(text, words, max_tokens=8, overlap_tokens=0) == []


def test_short_text_is_one_chunk_without_surrounding_whitespace() -> None:
    text = "\n  Hello world.\n\nSecond   paragraph here.  \n"
    [chunk] = chunk_text(text, words, max_tokens=50, overlap_tokens=5)
    assert chunk == Chunk(index=0, text="Hello world.\n\nSecond   paragraph here.", start=3, end=41)


def test_chunks_break_at_sentence_ends_and_repeat_the_last_sentence() -> None:
    text = "One two. Three four! Five six? Seven eight. Nine ten."
    chunks = chunk_text(text, words, max_tokens=8, overlap_tokens=3)
    assert [c.text for c in chunks] == ["One two. Three four! Five six? Seven eight.", "Seven eight. Nine ten."]
    check_invariants(text, chunks, words, 8)


def test_overlap_takes_as_many_trailing_sentences_as_fit() -> None:
    text = "a b. c d. e f. g h. i j. k l. m n. o p. q r. s t."
    chunks = chunk_text(text, words, max_tokens=12, overlap_tokens=5)
    assert [c.text for c in chunks] == ["a b. c d. e f. g h. i j. k l.", "i j. k l. m n. o p. q r. s t."]


def test_no_overlap_when_disabled_or_when_the_last_sentence_is_too_big() -> None:
    text = "a b. c d. e f. g h. i j. k l."
    assert [c.text for c in chunk_text(text, words, max_tokens=8, overlap_tokens=0)] == [
        "a b. c d. e f. g h.",
        "i j. k l.",
    ]
    long_sentences = "a b c d e. f g h i j. k l m n o."
    assert [c.text for c in chunk_text(long_sentences, words, max_tokens=10, overlap_tokens=4)] == [
        "a b c d e. f g h i j.",
        "k l m n o.",
    ]


def test_line_breaks_end_pieces_but_abbreviation_like_dots_inside_words_do_not() -> None:
    text = "version 1.2.3 is out\nsee e.g.the notes\n\nthen more"
    chunks = chunk_text(text, words, max_tokens=8, overlap_tokens=0)
    assert [c.text for c in chunks] == ["version 1.2.3 is out\nsee e.g.the notes", "then more"]


def test_closing_quote_after_a_full_stop_ends_a_sentence() -> None:
    text = 'He said "stop." Then one two three four five six.'
    chunks = chunk_text(text, words, max_tokens=8, overlap_tokens=0)
    assert [c.text for c in chunks] == ['He said "stop."', "Then one two three four five six."]


def test_a_long_sentence_is_split_into_overlapping_word_windows() -> None:
    text = " ".join(f"w{i}" for i in range(30)) + "."
    chunks = chunk_text(text, words, max_tokens=10, overlap_tokens=2)
    assert [words(c.text) for c in chunks] == [10, 10, 10, 6]
    assert chunks[1].text.startswith("w8 w9 w10")
    check_invariants(text, chunks, words, 10)


def test_a_huge_word_is_split_into_character_windows() -> None:
    blob = "x" * 200
    text = f"Before. {blob} After."
    chunks = chunk_text(text, characters, max_tokens=8, overlap_tokens=0)
    check_invariants(text, chunks, characters, 8)
    assert "".join(c.text for c in chunks if "x" in c.text).replace(" ", "").count("x") == 200
    assert all(len(c.text) <= 31 for c in chunks)


def test_per_call_special_tokens_are_counted_once_per_chunk() -> None:
    text = " ".join(f"s{i}." for i in range(100))  # 100 one-word sentences
    chunks = chunk_text(text, with_specials, max_tokens=20, overlap_tokens=0)
    check_invariants(text, chunks, with_specials, 20)
    assert [with_specials(c.text) for c in chunks] == [20] * 5 + [2 + 100 - 5 * 18]


def test_a_tokenizer_that_is_not_additive_still_gets_chunks_within_budget() -> None:
    text = "\n".join(f"line {i}" for i in range(40))
    chunks = chunk_text(text, newline_costs, max_tokens=12, overlap_tokens=3)
    check_invariants(text, chunks, newline_costs, 12)
    assert max(newline_costs(c.text) for c in chunks) >= 10  # shrunk only as far as needed


def test_tokenizer_work_grows_linearly_with_the_text() -> None:
    sentences = [f"Sentence number {i} has a few words in it." for i in range(3000)]
    text = "\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4))
    calls: list[int] = []

    def counting(piece: str) -> int:
        calls.append(len(piece))
        return words(piece)

    chunks = chunk_text(text, counting, max_tokens=128, overlap_tokens=16)
    check_invariants(text, chunks, words, 128)
    assert len(calls) <= len(sentences) + len(chunks) + 1
    assert sum(calls) <= 3 * len(text)


def test_same_input_same_chunks() -> None:
    text = "Alpha beta. Gamma delta!\nEpsilon zeta? " * 20
    assert chunk_text(text, words, max_tokens=9, overlap_tokens=3) == chunk_text(
        text, words, max_tokens=9, overlap_tokens=3
    )


# --- properties ----------------------------------------------------------------------------------------

WORD = st.text(alphabet="abcxyz.!?,'\"0", min_size=1, max_size=12)
SEPARATOR = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n ", ". ", "? ", "\r\n"])
TEXT = st.lists(st.tuples(WORD, SEPARATOR), max_size=120).map(lambda parts: "".join(w + s for w, s in parts))
BUDGET = st.integers(min_value=8, max_value=40).flatmap(
    lambda max_tokens: st.tuples(st.just(max_tokens), st.integers(min_value=0, max_value=max_tokens // 2 - 1))
)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, budget=BUDGET, prefix=st.sampled_from(["", " ", "\n ", "  \t"]))
def test_property_every_word_covered_budget_kept_and_deterministic(
    text: str, budget: tuple[int, int], prefix: str
) -> None:
    text = prefix + text
    max_tokens, overlap_tokens = budget
    chunks = chunk_text(text, words, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    check_invariants(text, chunks, words, max_tokens)
    assert chunks == chunk_text(text, words, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    covered_words = [m for m in re.finditer(r"\S+", text) if not any(c.start <= m.start() < c.end for c in chunks)]
    assert covered_words == []


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(st.tuples(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=80), SEPARATOR), max_size=40).map(
        lambda parts: "".join(w + s for w, s in parts)
    ),
    budget=BUDGET,
)
def test_property_long_words_are_cut_into_fitting_windows(text: str, budget: tuple[int, int]) -> None:
    max_tokens, overlap_tokens = budget
    check_invariants(
        text, chunk_text(text, characters, max_tokens=max_tokens, overlap_tokens=overlap_tokens), characters, max_tokens
    )


@settings(max_examples=200, deadline=None)
@given(text=TEXT, budget=BUDGET)
def test_property_special_tokens_and_non_additive_counts_stay_within_budget(text: str, budget: tuple[int, int]) -> None:
    max_tokens, overlap_tokens = budget
    for count in (with_specials, newline_costs):
        check_invariants(
            text, chunk_text(text, count, max_tokens=max_tokens, overlap_tokens=overlap_tokens), count, max_tokens
        )


SMALL_SENTENCE = st.lists(st.text(alphabet="abcdef", min_size=1, max_size=6), min_size=1, max_size=3).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(
    sentences=st.lists(
        st.tuples(SMALL_SENTENCE, st.sampled_from([". ", ".\n", "!\n\n", "? "])), min_size=1, max_size=80
    ),
    max_tokens=st.integers(min_value=8, max_value=40),
)
def test_property_consecutive_chunks_overlap_when_pieces_are_small(
    sentences: list[tuple[str, str]], max_tokens: int
) -> None:
    text = "".join(sentence + end for sentence, end in sentences)
    overlap_tokens = max_tokens // 2 - 1  # at least 3, and every sentence has at most 3 words
    chunks = chunk_text(text, words, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    check_invariants(text, chunks, words, max_tokens)
    for before, after in pairwise(chunks):
        assert after.start < before.end
        assert words(text[after.start : before.end]) <= overlap_tokens


def test_a_giant_single_token_word_is_still_cut_to_a_bounded_size() -> None:
    text = "start " + "x" * 200_000 + " end"
    chunks = chunk_text(text, lambda t: len(t.split()), max_tokens=64, overlap_tokens=8)
    assert max(len(c.text) for c in chunks) <= 64 * MAX_CHARS_PER_TOKEN
    assert "".join(c.text for c in chunks).replace(" ", "").count("x") >= 200_000
    assert all(c.text == text[c.start : c.end] for c in chunks)
