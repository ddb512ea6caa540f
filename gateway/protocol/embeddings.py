"""The OpenAI embeddings request (``POST /v1/embeddings``) and its answer, as the gateway speaks them.

Inputs are text: a string or a list of strings. OpenAI also accepts arrays of token ids, but those are ids
of OpenAI's tokenizer (LangChain's ``OpenAIEmbeddings`` sends them unless ``check_embedding_ctx_length`` is
off); read as ids of another model's vocabulary they would give vectors of other words, so they are
refused with a message saying what to send instead. Unknown fields are ignored, as other servers' extensions
(``input_type``, ``truncate``) may be sent by clients written for them.

Vectors go out as OpenAI sends them: a list of floats, or (``encoding_format: base64``, what the official
Python client asks for by default) the base64 of little-endian float32 values.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from gateway.errors import InvalidRequest
from gateway.protocol.bodies import invalid, json_object

PATH = "/v1/embeddings"
ENDPOINT = "embeddings"  # the endpoint label of its requests in the metrics

EncodingFormat = Literal["float", "base64"]


class _Options(BaseModel):
    """Every field but ``input``, which is checked by hand (pydantic's messages for a union of a string and
    a list of strings would speak of both)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    encoding_format: EncodingFormat | None = None  # None: float
    dimensions: StrictInt | None = None
    user: Annotated[StrictStr, Field(max_length=256)] | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    single: bool  # ``input`` was one string, not a list
    encoding_format: EncodingFormat
    dimensions: int | None
    user: str | None

    def param(self, index: int) -> str:
        """How an error names one input: ``input`` for a lone string, ``input.3`` in a list."""
        return "input" if self.single else f"input.{index}"


_TOKEN_IDS = (
    "input: token ids are not accepted: they would be read in this model's own vocabulary, not the one they "
    "were made with; send the text itself (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))"
)


def parse_embedding_request(raw: bytes) -> EmbeddingRequest:
    """The checked request; :class:`InvalidRequest` naming the field when it is malformed."""
    data = json_object(raw)
    try:
        options = _Options.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None
    texts = _texts(data.get("input"), "input" in data)
    return EmbeddingRequest(
        options.model,
        texts,
        isinstance(data["input"], str),
        options.encoding_format or "float",
        options.dimensions,
        options.user,
    )


def _texts(value: Any, given: bool) -> list[str]:
    """``input``, checked: a non-empty string or a non-empty list of non-empty strings (pydantic's messages
    for a union of the two would talk of both branches)."""
    if not given or value is None:
        raise InvalidRequest("input: required: a string or a list of strings", param="input")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input: the text is empty", param="input")
        return [value]
    if not isinstance(value, list):
        raise InvalidRequest(f"input: must be a string or a list of strings, not {_kind(value)}", param="input")
    if not value:
        raise InvalidRequest("input: the list of texts is empty; send at least one", param="input")
    if _is_token_ids(value):
        raise InvalidRequest(_TOKEN_IDS, param="input")
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise InvalidRequest(f"input.{index}: must be a string, not {_kind(text)}", param=f"input.{index}")
        if not text:
            raise InvalidRequest(f"input.{index}: the text is empty", param=f"input.{index}")
    return value


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _is_token_ids(value: list[Any]) -> bool:
    """A list of integers, or a list of lists: OpenAI's token-id forms of ``input``."""
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(isinstance(v, list) for v in value)


def float32_base64(vector: Sequence[float]) -> str:
    """A vector as OpenAI's ``base64`` encoding: little-endian float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_list(model: str, embeddings: Sequence[object], prompt_tokens: int) -> bytes:
    """The answer: one ``embedding`` object per input, in input order.

    Each item of ``embeddings`` is a base64 string or a vector orjson can write: a list of floats, or a
    numpy float32 array, which it writes as float32 (about 9 digits each, as OpenAI does, instead of the 17
    a float64 would take)."""
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


__all__ = [
    "ENDPOINT",
    "PATH",
    "EmbeddingRequest",
    "EncodingFormat",
    "embedding_list",
    "float32_base64",
    "parse_embedding_request",
]
