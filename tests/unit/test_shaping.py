"""Reshaping a request for its target: model name, system prompt, caps; untouched bytes otherwise."""

from __future__ import annotations

import orjson

from gateway.dispatch.shaping import request_features, shape_body
from gateway.protocol.requests import parse_request
from routing import Caps, Target, TargetKind

RAW = orjson.dumps(
    {"model": "bot", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 500, "top_k": 3}
)


def _shape(target: Target, raw: bytes = RAW, upstream: str = "served") -> dict[str, object]:
    data, _ = parse_request("chat", raw)
    return dict(orjson.loads(shape_body(raw, data, "chat", target, upstream)))


def test_nothing_to_change_forwards_the_clients_bytes() -> None:
    data, _ = parse_request("chat", RAW)
    assert shape_body(RAW, data, "chat", Target(TargetKind.ADAPTER, "bot"), "bot") is RAW


def test_model_prompt_and_caps_are_applied_and_the_rest_kept() -> None:
    target = Target(TargetKind.BASE, "served", None, "Be brief.", Caps(max_tokens=64, temperature=0.5))
    body = _shape(target)
    assert body["model"] == "served"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.5  # absent means 1.0, which the cap bounds
    assert body["top_k"] == 3


def test_a_client_system_prompt_is_kept_after_the_targets() -> None:
    raw = orjson.dumps(
        {
            "model": "bot",
            "messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}],
            "max_tokens": 10,
        }
    )
    body = _shape(Target(TargetKind.BASE, "served", None, "Theirs.", Caps(max_tokens=64)), raw)
    assert body["messages"][0] == {"role": "system", "content": "Theirs.\n\nMine."}  # type: ignore[index]
    assert body["max_tokens"] == 10  # below the cap: the client's own value stays


def test_completions_get_the_prompt_prefixed() -> None:
    raw = orjson.dumps({"model": "bot", "prompt": "Once upon a time"})
    data, _ = parse_request("completions", raw)
    target = Target(TargetKind.BASE, "served", None, "Tell a story.")
    body = orjson.loads(shape_body(raw, data, "completions", target, "served"))
    assert body["prompt"] == "Tell a story.\n\nOnce upon a time"


def test_features_identify_the_conversation_by_its_first_message() -> None:
    turn1 = orjson.dumps({"model": "bot", "messages": [{"role": "user", "content": "first"}]})
    turn2 = orjson.dumps(
        {
            "model": "bot",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "second"},
            ],
        }
    )
    f1 = request_features(parse_request("chat", turn1)[1], "r1", None, {})
    f2 = request_features(parse_request("chat", turn2)[1], "r2", None, {})
    assert f1.conversation == f2.conversation
    assert f2.text == "second"
    assert f2.message_count == 3
    explicit = request_features(parse_request("chat", turn1)[1], "r3", None, {"x-turnout-conversation": "c-9"})
    assert explicit.conversation == "c-9"


def test_both_max_tokens_spellings_are_capped() -> None:
    raw = orjson.dumps({"model": "bot", "prompt": "hi", "max_completion_tokens": 1, "max_tokens": 100000})
    data, _ = parse_request("completions", raw)
    target = Target(TargetKind.BASE, "served", None, None, Caps(max_tokens=64))
    body = orjson.loads(shape_body(raw, data, "completions", target, "served"))
    assert body["max_tokens"] == 64
    assert body["max_completion_tokens"] == 1
