"""Tokens per training example, counted by the tokenizer the target trains with.

* **OpenAI models**: tiktoken, with the encoding tiktoken maps the model to (``o200k_base`` for the GPT-4o
  and GPT-4.1 families), and OpenAI's published rule for chat messages: 3 tokens of framing per message,
  1 more for a ``name``, 3 to prime the answer. The encodings are read from the copies litellm ships
  (tiktoken would otherwise download them; nothing here reaches the network).
* **A LoRA adapter**: the base model's own tokenizer and chat template (``tokenizer.json`` and
  ``tokenizer_config.json`` in its directory, read by transformers), applied to the whole conversation:
  exactly the tokens training reads.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Protocol

from gateway.finetune.dataset import Example, text_of

_PER_MESSAGE, _PER_NAME, _ANSWER_PRIMING = 3, 1, 3
_DEFAULT_ENCODING = "o200k_base"  # OpenAI's current chat models


class TokenCounter(Protocol):
    name: str  # what counts: "tiktoken o200k_base", "the tokenizer of DIR"
    context: int | None  # the longest example the target trains on, in its tokens (None: unknown)

    def count(self, example: Example) -> int: ...


def base_of(model: str) -> str:
    """The base model of an OpenAI fine-tune id (``ft:gpt-4o-mini-2024-07-18:acme::abc`` -> ``gpt-4o-mini-...``)."""
    return model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else model


class OpenAICounter:
    def __init__(self, model: str, context: int | None) -> None:
        _use_bundled_encodings()
        import tiktoken

        try:
            self._encoding = tiktoken.encoding_for_model(base_of(model))
        except KeyError:  # a model tiktoken does not know yet: OpenAI's current encoding
            self._encoding = tiktoken.get_encoding(_DEFAULT_ENCODING)
        self.name = f"tiktoken {self._encoding.name}"
        self.context = context

    def tokens(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def count(self, example: Example) -> int:
        total = _ANSWER_PRIMING
        for message in example.messages:
            total += _PER_MESSAGE + self.tokens(str(message.get("role", ""))) + self.tokens(text_of(message))
            if "name" in message:
                total += _PER_NAME + self.tokens(str(message["name"]))
            for key in ("tool_calls", "function_call"):
                if message.get(key):
                    total += self.tokens(json.dumps(message[key], separators=(",", ":")))
        if example.tools:
            total += self.tokens(json.dumps(example.tools, separators=(",", ":")))
        return total


class ChatTemplateCounter:
    def __init__(self, base_dir: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{base_dir}: the tokenizer has no chat template to format conversations with")
        self.name = f"the tokenizer and chat template of {base_dir}"
        self.context = _max_positions(base_dir)

    def ids(self, example: Example) -> list[int]:
        messages = [{**m, "content": text_of(m)} for m in example.messages]
        found = self.tokenizer.apply_chat_template(messages, tokenize=True, tools=example.tools)
        if hasattr(found, "keys"):  # a BatchEncoding (transformers' default return in newer releases)
            found = found["input_ids"]
        return list(found)

    def count(self, example: Example) -> int:
        return len(self.ids(example))


def _max_positions(base_dir: Path) -> int | None:
    try:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def _use_bundled_encodings() -> None:
    """Point tiktoken at the encodings litellm ships (``cl100k_base``, ``o200k_base``) unless told otherwise."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return
    bundled = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    if bundled.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)


__all__ = ["ChatTemplateCounter", "OpenAICounter", "TokenCounter", "base_of"]
