"""Token usage counted here when the upstream reports none.

The gateway asks every upstream for usage (``stream_options.include_usage`` on streams), so counting is
the exception: a stream the client abandoned, or an upstream that ignores the option. Then the prompt
and the text generated so far are counted with the model's own tokenizer (the base model's
``tokenizer.json`` for vLLM targets, litellm's counter for OpenAI models) and the figure is marked
estimated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.protocol.requests import CHARS_PER_TOKEN, Endpoint
from gateway.protocol.usage import Usage, prompt_texts

log = logging.getLogger("turnout.accounting")

_TOKENIZED_CHARS = 64 * 1024


class TokenCounter:
    """Counts tokens for estimates: vLLM targets with the base model's tokenizer, OpenAI ones by model."""

    def __init__(self, tokenizer_file: Path | None, openai_count: Callable[[str, str], int] | None = None) -> None:
        self._tokenizer: Any = None
        if tokenizer_file is not None and tokenizer_file.is_file():
            try:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            except Exception as exc:  # a tokenizer it cannot read only makes estimates rougher
                log.warning(
                    "cannot read %s (%s); token estimates fall back to 4 characters a token", tokenizer_file, exc
                )
        self._openai_count = openai_count

    def count(self, texts: list[str], openai_model: str | None) -> int:
        if not texts:
            return 0
        if sum(len(text) for text in texts) > _TOKENIZED_CHARS:
            # Counting runs on the event loop: past this size (a hostile prompt, an hour-long stream) the
            # estimate counts characters rather than stall every other request for a tokenizer pass.
            return sum(len(text) for text in texts) // CHARS_PER_TOKEN
        if openai_model is not None and self._openai_count is not None:
            return sum(self._openai_count(openai_model, text) for text in texts)
        if self._tokenizer is not None:
            return sum(len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False))
        return sum(len(text) for text in texts) // CHARS_PER_TOKEN

    def estimate(
        self,
        endpoint: Endpoint,
        data: dict[str, Any],
        generated: list[str],
        openai_model: str | None,
        added: list[str] | None = None,
    ) -> Usage:
        """Usage counted here: the client's prompt, what the gateway ``added`` to it, and the text generated."""
        texts, framing = prompt_texts(endpoint, data)
        prompt = self.count(texts + (added or []), openai_model) + framing
        return Usage(prompt, self.count(["".join(generated)], openai_model) if generated else 0, estimated=True)


__all__ = ["TokenCounter"]
