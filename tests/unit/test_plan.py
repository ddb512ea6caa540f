"""``turnout plan``: every route's figures against ones computed by hand from the configured prices, and the
training and corpus one-offs priced as ``turnout finetune estimate`` and the ledger price them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.accounting.prices import PriceBook
from gateway.cli import app
from gateway.config.model import CostsConfig
from gateway.finetune.plan import BASELINE, Traffic, Training, plan

FT = "ft:gpt-4o-mini-2024-07-18"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune" / "support-formal.jsonl"
# $3.60 a GPU-hour: $0.001 a second; 1,000 prompt tokens a second (1e-6 $ and 1 ms each), 100 answer tokens
# (1e-5 $ each); retrieval $0.1 per 1M embedded tokens and $0.001 a search; the fine-tune $0.3 / $1.2 per 1M.
COSTS = {
    "vllm": {"gpu_hour_usd": 3.6, "prompt_tokens_per_second": 1000, "completion_tokens_per_second": 100},
    "rag": {"embedding_usd_per_1m_tokens": 0.1, "search_usd_per_query": 0.001},
    "openai": {
        "models": {FT: {"input": 0.3, "output": 1.2}},
        "training_usd_per_1m_tokens": {"gpt-4o-mini-2024-07-18": 4.0},
    },
}
TRAFFIC = Traffic(1000, 300, 150, system_prompt_tokens=2000, corpus_tokens=100_000, top_k=4, chunk_tokens=200)


def test_every_route_is_priced_as_computed_by_hand() -> None:
    prices = PriceBook(CostsConfig.model_validate(COSTS), [FT])
    routes = {r.route: r for r in plan(TRAFFIC, prices, FT, Training(adapter_usd=1.0, openai_usd=2.0))}
    baseline = routes[BASELINE]
    expected = {  # per request; one-off; added ms
        "adapter": (300e-6 + 150e-5, 1.0, 0.0),
        BASELINE: (2300e-6 + 150e-5, 0.0, 2000.0),
        "RAG + base": (1100e-6 + 150e-5 + 300 * 0.1e-6 + 0.001, 100_000 * 0.1e-6, 6.0 + 800.0),
        "RAG + adapter": (1100e-6 + 150e-5 + 300 * 0.1e-6 + 0.001, 100_000 * 0.1e-6 + 1.0, 806.0),
        f"OpenAI fine-tune ({FT})": (300 * 0.3e-6 + 150 * 1.2e-6, 2.0, 0.0),
    }
    assert list(routes) == list(expected)
    for name, (per_request, one_off, added) in expected.items():
        route = routes[name]
        assert route.usd_per_request == pytest.approx(per_request, rel=1e-9), name
        assert route.usd_per_1000 == pytest.approx(per_request * 1000, rel=1e-9)
        assert route.usd_per_month == pytest.approx(per_request * 1000 * 30, rel=1e-9)
        assert route.one_off_usd == pytest.approx(one_off, rel=1e-9)
        assert route.added_ms == pytest.approx(added, rel=1e-9)
    assert routes["adapter"].break_even(baseline) == (500, 0.5)  # $1 at $0.002 saved a request
    assert routes[f"OpenAI fine-tune ({FT})"].break_even(baseline) == (567, 0.567)  # ceil(2 / 0.00353)
    assert routes["RAG + base"].break_even(baseline) == (59, 0.059)  # ceil(0.01 / 0.00017)
    assert baseline.break_even(baseline) is None


def test_the_command_prices_training_as_finetune_estimate_does(tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(yaml.safe_dump({"vllm": {"url": "http://127.0.0.1:1", "model": "tiny"}, "costs": COSTS}))
    args = ["-c", str(config), "--requests-per-day", "1000", "--prompt-tokens", "300", "--answer-tokens", "150"]
    planned = CliRunner().invoke(app, ["plan", *args, "--training-file", str(SAMPLE), "--epochs", "3", "--json"])
    assert planned.exit_code == 0, planned.output
    facts = json.loads(planned.output)
    estimated = CliRunner().invoke(
        app, ["finetune", "estimate", str(SAMPLE), "--epochs", "3", "-c", str(config), "--json"]
    )
    assert estimated.exit_code == 0, estimated.output
    [openai_estimate] = json.loads(estimated.output)["estimates"]  # no base model configured: OpenAI only
    assert facts["training"]["openai_usd"] == pytest.approx(openai_estimate["usd"], abs=1e-6)
    assert facts["training"]["adapter_usd"] > 0
    table = CliRunner().invoke(app, ["plan", *args])
    assert table.exit_code == 0, table.output
    assert "base + system prompt" in table.output
    assert "3.8000" in table.output  # the baseline's dollars per 1,000 requests
    unpriced = CliRunner().invoke(app, ["plan", *args, "--openai-model", "ft:nobody-knows:x::y"])
    assert unpriced.exit_code == 2
