"""``turnout plan``: each route's dollars and latency for a given traffic, with the gateway's own prices."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import USAGE, fail, load_or_exit
from gateway.config import TurnoutConfig
from gateway.finetune.plan import Traffic, Training


def plan_command(
    config: Annotated[Path, typer.Option("--config", "-c", metavar="FILE", help="Prices and RAG settings.")],
    requests_per_day: Annotated[float, typer.Option(min=0, help="Requests a day.")],
    prompt_tokens: Annotated[int, typer.Option(min=0, help="Average prompt tokens the caller sends.")],
    answer_tokens: Annotated[int, typer.Option(min=0, help="Average answer tokens.")],
    corpus_tokens: Annotated[int, typer.Option(min=0, help="Tokens of the RAG corpus, embedded once.")] = 0,
    system_prompt_tokens: Annotated[
        int, typer.Option(min=0, help="System prompt tokens the base model gets instead of training.")
    ] = 2000,
    openai_model: Annotated[
        str, typer.Option(metavar="MODEL", help="The OpenAI fine-tune (or its base model) to price.")
    ] = "ft:gpt-4o-mini-2024-07-18",
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Chunks in a RAG prompt (default: the collection's).")
    ] = None,
    chunk_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens a chunk (default: rag.chunking).")] = None,
    retrieval_ms: Annotated[float, typer.Option(min=0, help="Query embedding and search, in ms.")] = 6.0,
    training_file: Annotated[
        Path | None, typer.Option(metavar="FILE.jsonl", help="Price training on this file (adapter, fine-tune).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, max=50, help="Training passes (default: auto).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Compare routes before building them: per route (adapter, base model with a system prompt, RAG with the
    base model or an adapter, OpenAI fine-tune) the dollars per 1,000 requests and per month, the one-off
    cost (training on --training-file, embedding the corpus), the latency it adds (retrieval, a longer
    prompt's prefill at the replica's prompt throughput), and the break-even against the base model with a
    system prompt; priced as the gateway meters requests (the costs: section).

    Exit status: 0 with the plan printed; 1 when the training file cannot be trained on; 2 when the
    configuration or the training file cannot be read, or the OpenAI model has no price.
    """
    from gateway.accounting.prices import PriceBook
    from gateway.config.prices import PriceError
    from gateway.finetune.plan import BASELINE, plan

    settings = load_or_exit(config)
    try:
        prices = PriceBook(settings.costs, [openai_model])
    except PriceError as exc:
        raise fail(str(exc), USAGE) from None
    collections = list(settings.rag.collections.values())
    traffic = Traffic(
        requests_per_day=requests_per_day,
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        system_prompt_tokens=system_prompt_tokens,
        corpus_tokens=corpus_tokens,
        top_k=top_k or (collections[0].top_k if collections else 4),
        chunk_tokens=chunk_tokens or settings.rag.chunking.max_tokens,
        retrieval_ms=retrieval_ms,
    )
    training = _training(training_file, epochs, openai_model, settings) if training_file else Training()
    routes = plan(traffic, prices, openai_model, training)
    baseline = next(r for r in routes if r.route == BASELINE)
    rows = [route.describe(baseline) for route in routes]
    if as_json:
        typer.echo(json.dumps({"traffic": asdict(traffic), "training": asdict(training), "routes": rows}, indent=2))
        return
    _table(rows, traffic)


def _training(file: Path, epochs: int | None, openai_model: str, settings: TurnoutConfig) -> Training:
    """What training on ``file`` costs, as ``turnout finetune estimate`` prices it."""
    from gateway.finetune.check import check, estimate_training, training_context
    from gateway.finetune.dataset import read_dataset
    from gateway.finetune.tokens import ChatTemplateCounter, OpenAICounter, TokenCounter, base_of

    base_model = base_of(openai_model)
    try:
        dataset = read_dataset(file)
        openai_counter = OpenAICounter(base_model, training_context(base_model))
        adapter_counter: TokenCounter = openai_counter
        if settings.base_model.path is not None:
            adapter_counter = ChatTemplateCounter(settings.base_model.path)
    except (OSError, ValueError) as exc:
        raise fail(f"{file}: {exc}", USAGE) from None
    report = check(dataset, openai_counter)
    if not report.usable:
        raise fail(f"{file} cannot be trained on as it is: run turnout finetune check {file}")
    adapter_tokens = check(dataset, adapter_counter).billed_tokens()
    found = estimate_training(report, base_model, settings.costs, epochs, adapter_tokens)
    assert found.adapter is not None  # adapter tokens were given
    return Training(adapter_usd=found.adapter.usd, openai_usd=found.openai.usd if found.openai is not None else 0.0)


def _table(rows: list[dict[str, Any]], traffic: Traffic) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{traffic.requests_per_day:,.0f} requests a day, {traffic.prompt_tokens:,} prompt and "
        f"{traffic.answer_tokens:,} answer tokens each"
    )
    for column in ("route", "prompt tokens", "$ / 1k requests", "$ / month", "one-off $", "adds ms", "break-even"):
        table.add_column(column, justify="left" if column == "route" else "right")
    for row in rows:
        days, even = row["break_even_days"], "-"
        if days is not None:
            when = f"{days:,.1f} days" if days >= 1 else f"{days * 24:.1f} hours"
            even = f"{row['break_even_requests']:,} requests ({when})"
        table.add_row(
            row["route"],
            f"{row['prompt_tokens']:,}",
            f"{row['usd_per_1000_requests']:.4f}",
            f"{row['usd_per_month']:,.2f}",
            f"{row['one_off_usd']:,.2f}",
            f"{row['added_latency_ms']:.1f}",
            even,
        )
    Console(width=160).print(table)


__all__ = ["plan_command"]
