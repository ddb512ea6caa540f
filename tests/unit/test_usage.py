"""Usage: as upstreams report it, prompt and generated texts, and token counts for estimates.

Pure logic: no network, no vLLM; the metrics are a real registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.accounting.usage import TokenCounter
from gateway.protocol.usage import Usage, generated_texts, prompt_texts, usage_of, usage_of_body
from tests.unit.accounting_support import (
    TOKENIZER_TEXT,
    chat_chunk,
)


def test_usage_of_without_details() -> None:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    assert usage_of(body) == Usage(10, 5, 0, estimated=False)


def test_usage_of_with_cached_tokens() -> None:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}}
    assert usage_of(body) == Usage(10, 5, 3)


def test_usage_of_with_null_cached_tokens() -> None:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": None}}}
    assert usage_of(body) == Usage(10, 5, 0)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "usage",
        {},
        {"usage": None},
        {"usage": []},
        {"usage": {"prompt_tokens": 10}},
        {"usage": {"completion_tokens": 10}},
        {"usage": {"prompt_tokens": "10", "completion_tokens": 5}},
        {"usage": {"prompt_tokens": 1.5, "completion_tokens": 5}},
        {"usage": {"prompt_tokens": 10, "completion_tokens": None}},
    ],
)
def test_usage_of_invalid_shapes(body: Any) -> None:
    assert usage_of(body) is None


def test_usage_of_body() -> None:
    assert usage_of_body(b'{"usage":{"prompt_tokens":7,"completion_tokens":2}}') == Usage(7, 2)


@pytest.mark.parametrize("body", [b"", b"not json", b'{"usage":', b"\xff\xfe", b"[1, 2]", b"null"])
def test_usage_of_body_invalid(body: bytes) -> None:
    assert usage_of_body(body) is None


def test_usage_as_openai() -> None:
    assert Usage(7, 2).as_openai() == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert Usage(7, 2).total == 9


def test_prompt_texts_chat() -> None:
    data = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                    {"type": "text", "text": "LoRA?"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ]
    }
    assert prompt_texts("chat", data) == (["Be brief.", "What is", "LoRA?"], 4 * 3 + 3)


def test_prompt_texts_completions_string_and_strings() -> None:
    assert prompt_texts("completions", {"prompt": "Once upon"}) == (["Once upon"], 0)
    assert prompt_texts("completions", {"prompt": ["a", "bc"]}) == (["a", "bc"], 0)


def test_prompt_texts_completions_token_arrays() -> None:
    assert prompt_texts("completions", {"prompt": [[1, 2, 3], [4, 5]]}) == ([], 5)


def test_prompt_texts_completions_flat_token_array() -> None:
    assert prompt_texts("completions", {"prompt": [1, 2, 3]}) == ([], 3)


def test_generated_texts_chat_deltas() -> None:
    events = [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Hel"}),
        b": ping",
        chat_chunk({"content": "lo"}),
        chat_chunk({}, finish="stop"),
        b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        b"data: [DONE]",
    ]
    assert generated_texts("chat", events) == ["", "Hel", "lo"]


def test_generated_texts_whole_chat_message() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}}]}
    assert generated_texts("chat", [orjson.dumps(body)]) == ["Hello there"]


def test_generated_texts_completions() -> None:
    events = [
        b'data: {"choices":[{"index":0,"text":"Once"}]}',
        b'data: {"choices":[{"index":0,"text":" upon"}]}',
        b"data: [DONE]",
    ]
    assert generated_texts("completions", events) == ["Once", " upon"]
    assert generated_texts("completions", [b'{"choices":[{"index":0,"text":"whole"}]}']) == ["whole"]


def test_token_counter_counts_with_the_model_tokenizer(tokenizer_file: Path) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(tokenizer_file))
    expected = len(reference.encode(TOKENIZER_TEXT, add_special_tokens=False).ids)
    other = len(reference.encode("and a second text", add_special_tokens=False).ids)
    assert expected != len(TOKENIZER_TEXT) // 4  # so the fallback cannot pass for the tokenizer
    counter = TokenCounter(tokenizer_file)
    assert counter.count([TOKENIZER_TEXT], None) == expected
    assert counter.count([TOKENIZER_TEXT, "and a second text"], None) == expected + other


def test_token_counter_without_a_tokenizer_counts_four_characters_a_token(tmp_path: Path) -> None:
    assert TokenCounter(None).count(["abcdefgh", "abc"], None) == 11 // 4
    assert TokenCounter(tmp_path / "missing.json").count(["abcdefgh"], None) == 2
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not a tokenizer", encoding="utf-8")
    assert TokenCounter(broken).count(["abcdefgh"], None) == 2
    assert TokenCounter(None).count([], None) == 0


def test_estimate_is_marked_estimated() -> None:
    data = {"messages": [{"role": "system", "content": "abcdefgh"}, {"role": "user", "content": "abcd"}]}
    usage = TokenCounter(None).estimate("chat", data, ["Hel", "lo"], None)
    assert usage == Usage((8 + 4) // 4 + 4 * 2 + 3, len("Hello") // 4, 0, estimated=True)
    assert TokenCounter(None).estimate("completions", {"prompt": "abcdefgh"}, [], None) == Usage(2, 0, estimated=True)


def test_openai_models_are_counted_by_the_openai_counter(tokenizer_file: Path) -> None:
    calls: list[tuple[str, str]] = []

    def openai_count(model: str, text: str) -> int:
        calls.append((model, text))
        return 7

    counter = TokenCounter(tokenizer_file, openai_count=openai_count)
    assert counter.count(["a", "b"], "gpt-4o-mini") == 14
    assert calls == [("gpt-4o-mini", "a"), ("gpt-4o-mini", "b")]
    assert counter.estimate("completions", {"prompt": "hi"}, ["x"], "gpt-4o-mini") == Usage(7, 7, estimated=True)
    calls.clear()
    counter.count([TOKENIZER_TEXT], None)  # vLLM targets use the tokenizer, not the OpenAI counter
    assert calls == []


def test_huge_texts_are_counted_by_characters_not_tokenized(tokenizer_file: Path) -> None:
    counter = TokenCounter(tokenizer_file)
    huge = "word " * 20_000  # 100k characters: counted without a tokenizer pass on the event loop
    assert counter.count([huge], None) == len(huge) // 4
