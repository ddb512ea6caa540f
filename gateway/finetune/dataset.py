"""A chat fine-tuning file in OpenAI's format, read line by line and checked as OpenAI checks it.

Each line is one JSON object: ``messages`` (a list of ``{"role", "content"}`` turns), optionally ``tools``
and ``parallel_tool_calls``, nothing else. Roles are ``system``, ``developer``, ``user``, ``assistant``,
``tool`` (and the older ``function``); an assistant turn may carry ``weight`` (0 or 1: whether it is
trained on) and ``tool_calls``; the last turn is the assistant's, with something in it. Every problem is
reported with its line (1-based, as an editor counts), and the whole file is read: a user fixes every line
in one pass, not one per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"})
MAX_LINE_BYTES = 16 * 1024 * 1024  # a line longer than this is not an example anyone meant to write

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: on ``line`` (None: the file as a whole), an ``error`` (the file is not usable as it is)
    or a ``warning`` (usable, but probably not what was meant)."""

    line: int | None
    severity: Severity
    message: str

    def describe(self) -> dict[str, Any]:
        return {"line": self.line, "severity": self.severity, "message": self.message}


@dataclass(frozen=True, slots=True)
class Example:
    line: int
    messages: list[dict[str, Any]]
    tools: list[Any] | None = None

    def key(self) -> bytes:
        """The example's content, canonically: two examples with the same key are duplicates."""
        return orjson.dumps({"messages": self.messages, "tools": self.tools}, option=orjson.OPT_SORT_KEYS)


@dataclass(slots=True)
class Dataset:
    path: Path
    examples: list[Example] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    lines: int = 0

    @property
    def usable(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)


def read_dataset(path: Path) -> Dataset:
    """Read and check ``path`` (raises ``OSError`` if it cannot be read at all)."""
    dataset = Dataset(path)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            dataset.lines = number
            problems = _problems_of_line(raw, number, dataset)
            dataset.findings += [Finding(number, "error", problem) for problem in problems]
    if dataset.lines == 0:
        dataset.findings.append(Finding(None, "error", "the file is empty"))
    return dataset


def _problems_of_line(raw: bytes, number: int, dataset: Dataset) -> list[str]:
    if len(raw) > MAX_LINE_BYTES:
        return [f"the line is {len(raw):,} bytes long, more than {MAX_LINE_BYTES:,}"]
    text = raw.strip()
    if not text:
        return ["the line is empty (each line must be one JSON object)"]
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return [f"not valid JSON ({exc})"]
    if not isinstance(data, dict):
        return [f"a JSON {type(data).__name__} where an object with 'messages' is expected"]
    problems = [
        f"unknown key {key!r} (allowed: {', '.join(sorted(EXAMPLE_KEYS))})" for key in data.keys() - EXAMPLE_KEYS
    ]
    messages = data.get("messages")
    if messages is None:
        return [*problems, "no 'messages'"]
    if not isinstance(messages, list) or not messages:
        return [*problems, "'messages' must be a non-empty list"]
    for index, message in enumerate(messages):
        problems += _problems_of_message(message, index, last=index == len(messages) - 1)
    if not any(_trained(m) for m in messages if isinstance(m, dict)):
        problems.append("no assistant message is trained on (every one has weight 0)")
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        problems.append("'tools' must be a list")
    if "parallel_tool_calls" in data and not isinstance(data["parallel_tool_calls"], bool):
        problems.append("'parallel_tool_calls' must be true or false")
    if not problems:
        dataset.examples.append(Example(number, messages, tools if isinstance(tools, list) else None))
    return problems


def _problems_of_message(message: Any, index: int, *, last: bool) -> list[str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return [f"{where} must be an object with 'role' and 'content'"]
    problems = [f"{where}: unknown key {key!r}" for key in sorted(message.keys() - MESSAGE_KEYS)]
    role = message.get("role")
    if role not in ROLES:
        problems.append(f"{where}: role {role!r} is not one of {', '.join(sorted(ROLES))}")
    content = message.get("content")
    calls = message.get("tool_calls") or message.get("function_call")
    if content is None and not (role == "assistant" and calls):
        problems.append(f"{where}: no 'content'")
    elif content is not None and not _is_content(content):
        problems.append(f"{where}: 'content' must be a string or a list of text parts")
    if "weight" in message:
        if role != "assistant":
            problems.append(f"{where}: 'weight' is only for assistant messages")
        elif message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            problems.append(f"{where}: 'weight' must be 0 or 1, not {message['weight']!r}")
    if "name" in message and not isinstance(message["name"], str):
        problems.append(f"{where}: 'name' must be a string")
    if last:
        if role != "assistant":
            problems.append(f"{where}: the last message must be the assistant's (what the model learns to say)")
        elif not calls and not _text(content).strip():
            problems.append(f"{where}: the last assistant message is empty")
    return problems


def _is_content(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _trained(message: dict[str, Any]) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def text_of(message: dict[str, Any]) -> str:
    """A message's text (its parts joined), for counting."""
    return _text(message.get("content"))


__all__ = ["Dataset", "Example", "Finding", "Severity", "read_dataset", "text_of"]
