"""``turnout finetune check`` and ``estimate`` on real files with the real tokenizers: every problem of a broken
file reported on its own line, token counts equal to tiktoken's and to the base model's chat template's, and
estimates equal to figures computed by hand from the prices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from transformers import AutoTokenizer
from typer.testing import CliRunner

from gateway.cli import app
from gateway.finetune.check import check, default_epochs
from gateway.finetune.dataset import Example, read_dataset
from gateway.finetune.tokens import ChatTemplateCounter, OpenAICounter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "finetune"
BROKEN = FIXTURES / "broken.jsonl"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune" / "support-formal.jsonl"
runner = CliRunner()


def _write(path: Path, examples: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def _example(i: int, answer: str = "Certainly.") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}]}


def test_every_problem_of_a_broken_file_is_reported_with_its_line() -> None:
    dataset = read_dataset(BROKEN)
    errors = {(f.line, f.message) for f in dataset.findings}
    expected = {
        2: "not valid JSON",
        3: "a JSON list where an object with 'messages' is expected",
        4: "unknown key 'completion'",
        5: "'messages' must be a non-empty list",
        6: "messages[0]: the last message must be the assistant's",
        7: "messages[0]: role 'robot' is not one of",
        8: "messages[1]: the last assistant message is empty",
        9: "messages[1]: 'weight' must be 0 or 1, not 2",
        10: "messages[0]: 'weight' is only for assistant messages",
        11: "messages[0]: unknown key 'mood'",
        12: "the line is empty",
        13: "messages[0]: no 'content'",
        14: "messages[0]: 'content' must be a string or a list of text parts",
        15: "no assistant message is trained on",
    }
    for line, text in expected.items():
        assert any(at == line and text in message for at, message in errors), (line, text, sorted(errors))
    assert {line for line, _ in errors} == set(expected)  # lines 1 and 16 are well-formed
    assert any(line == 4 and "no 'messages'" in m for line, m in errors)
    assert any(line == 6 and "no assistant message is trained on" in m for line, m in errors)
    assert [e.line for e in dataset.examples] == [1, 16]
    report = check(dataset, OpenAICounter("gpt-4o-mini-2024-07-18", 65_536))
    assert any(f.line == 16 and f.message == "the same example as line 1" for f in report.findings)
    assert any(f.line is None and f.severity == "error" and "at least 10" in f.message for f in report.findings)
    assert not report.usable


def test_openai_tokens_are_tiktokens_with_openais_message_framing(tmp_path: Path) -> None:
    example: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Où est mon colis ?", "name": "ana"},
            {"role": "assistant", "content": [{"type": "text", "text": "Demain."}]},
        ]
    }
    dataset = read_dataset(_write(tmp_path / "one.jsonl", [example]))
    counted = OpenAICounter("gpt-4o-mini-2024-07-18", None).count(dataset.examples[0])
    encoding = tiktoken.get_encoding("o200k_base")
    by_hand = 3  # the answer's priming
    for message, text in zip(example["messages"], ["Be brief.", "Où est mon colis ?", "Demain."], strict=True):
        by_hand += 3 + len(encoding.encode(str(message["role"]))) + len(encoding.encode(text))
    by_hand += 1 + len(encoding.encode("ana"))
    assert counted == by_hand
    assert OpenAICounter("gpt-3.5-turbo-0125", None).name == "tiktoken cl100k_base"
    assert OpenAICounter("ft:gpt-4o-mini-2024-07-18:acme::abc", None).name == "tiktoken o200k_base"


def test_adapter_tokens_are_the_base_models_chat_template(base_model_dir: Path) -> None:
    base = base_model_dir
    counter = ChatTemplateCounter(base)
    dataset = read_dataset(SAMPLE)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    for example in dataset.examples[:5]:
        ids: Any = tokenizer.apply_chat_template(example.messages, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert counter.count(example) == len(ids)
    assert counter.context == json.loads((base / "config.json").read_text())["max_position_embeddings"]


def test_examples_longer_than_the_context_are_flagged(tmp_path: Path) -> None:
    long = _example(0, "word " * 400)
    path = _write(tmp_path / "long.jsonl", [long] + [_example(i) for i in range(1, 60)])
    report = check(read_dataset(path), OpenAICounter("gpt-4o-mini-2024-07-18", 100))
    [flagged] = [f for f in report.findings if "trains on" in f.message]
    assert flagged.line == 1
    assert flagged.severity == "warning"
    assert report.usable
    assert report.billed_tokens() == 100 + sum(count for line, count in report.tokens if line != 1)


@pytest.mark.parametrize(
    ("examples", "epochs"), [(10, 10), (33, 4), (34, 3), (100, 3), (8333, 3), (8334, 2), (30000, 1)]
)
def test_default_epochs_follow_openais_auto_rule(examples: int, epochs: int) -> None:
    assert default_epochs(examples) == epochs


def test_the_sample_file_is_usable_and_counts_as_the_cli_says(tmp_path: Path) -> None:
    result = runner.invoke(app, ["finetune", "check", str(SAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["usable"]
    assert facts["errors"] == 0
    assert facts["examples"] == len(SAMPLE.read_text().splitlines())
    counter = OpenAICounter("gpt-4o-mini-2024-07-18", None)
    assert facts["tokens"]["total"] == sum(counter.count(e) for e in read_dataset(SAMPLE).examples)
    broken = runner.invoke(app, ["finetune", "check", str(BROKEN)])
    assert broken.exit_code == 1
    assert "error: line 7: messages[0]: role 'robot'" in broken.output
    missing = runner.invoke(app, ["finetune", "check", str(tmp_path / "nothing.jsonl")])
    assert missing.exit_code == 2


def test_estimates_are_the_hand_computed_figures(tmp_path: Path, base_model_dir: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(
        json.dumps(
            {
                "vllm": {"url": "http://127.0.0.1:1", "model": "tiny"},
                "base_model": {"path": str(base_model_dir)},
                "costs": {
                    "vllm": {"gpu_hour_usd": 2.0, "training_tokens_per_second": 500},
                    "openai": {"training_usd_per_1m_tokens": {"gpt-4o-mini-2024-07-18": 4.0}},
                },
            }
        )
    )
    result = runner.invoke(app, ["finetune", "estimate", str(SAMPLE), "--epochs", "2", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    openai_row, adapter_row = json.loads(result.output)["estimates"]
    examples = read_dataset(SAMPLE).examples
    openai_tokens = sum(OpenAICounter("gpt-4o-mini-2024-07-18", None).count(e) for e in examples)
    assert openai_row["training_tokens"] == 2 * openai_tokens
    assert openai_row["usd"] == pytest.approx(2 * openai_tokens * 4.0 / 1e6, abs=1e-6)
    adapter_tokens = sum(ChatTemplateCounter(base_model_dir).count(e) for e in examples)
    assert adapter_row["training_tokens"] == 2 * adapter_tokens
    assert adapter_row["gpu_hours"] == pytest.approx(2 * adapter_tokens / 500 / 3600, abs=1e-6)
    assert adapter_row["usd"] == pytest.approx(2 * adapter_tokens / 500 / 3600 * 2.0, abs=1e-6)
    shipped = runner.invoke(app, ["finetune", "estimate", str(SAMPLE), "--epochs", "3"])
    assert shipped.exit_code == 0, shipped.output
    assert f"${3 * openai_tokens * 3.0 / 1e6:,.2f}" in shipped.output  # the shipped price of gpt-4o-mini: $3/1M
    unknown = runner.invoke(app, ["finetune", "estimate", str(SAMPLE), "--model", "gpt-9"])
    assert unknown.exit_code == 2
    assert "costs.openai.training_usd_per_1m_tokens" in unknown.output


def test_a_dataset_example_key_ignores_key_order() -> None:
    a = Example(1, [{"role": "user", "content": "x"}])
    b = Example(2, [{"content": "x", "role": "user"}])
    assert a.key() == b.key()
