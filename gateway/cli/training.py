"""``turnout adapters check`` and ``turnout adapters train``: an adapter checked as the gateway checks it (and
its weights too), and one trained from a chat fine-tuning file on the base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import USAGE, fail, load_or_exit

BaseOption = Annotated[
    Path | None,
    typer.Option(
        "--base", metavar="DIR", help="The base model's directory (default: the configuration's base_model.path)."
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", metavar="FILE", help="Take the base model and vLLM's max LoRA rank from this file."),
]
MaxRankOption = Annotated[
    int | None,
    typer.Option("--max-rank", min=1, help="vLLM's --max-lora-rank (default: the configuration's, else 64)."),
]


def _base_and_rank(base: Path | None, config: Path | None, max_rank: int | None) -> tuple[Path, int, set[str]]:
    settings = load_or_exit(config) if config is not None else None
    names: set[str] = set()
    if settings is not None:
        base = base or settings.base_model.path
        max_rank = max_rank or settings.vllm.max_lora_rank
        names = {settings.vllm.model, *settings.base_model.aliases}
    if base is None:
        raise fail("give the base model: --base DIR, or --config FILE with base_model.path", USAGE)
    if not (base / "config.json").is_file():
        raise fail(f"{base}: not a model directory (no config.json)", USAGE)
    return base, max_rank or 64, names


def adapters_check(
    adapter: Annotated[Path, typer.Argument(metavar="DIR", help="The adapter's directory.")],
    base: BaseOption = None,
    config: ConfigOption = None,
    max_rank: MaxRankOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Check an adapter before deploying it: everything the gateway checks before loading one (LoRA, rank,
    base model, weight shapes), plus its target modules present in the base model and every weight finite.

    Exit status: 0 when the adapter can be served; 1 when it cannot (each problem is printed); 2 when the
    base model or the configuration cannot be read.
    """
    from gateway.finetune.adapter_check import check_adapter

    base_dir, rank, names = _base_and_rank(base, config, max_rank)
    report = check_adapter(adapter, base_dir, max_rank=rank, names=names)
    if as_json:
        typer.echo(json.dumps(report.describe(), indent=2))
    elif report.valid and report.facts is not None:
        modules = ", ".join(report.facts.target_modules)
        typer.echo(f"{adapter}: valid: LoRA rank {report.facts.rank} on {modules}, {report.tensors} finite tensors")
    else:
        for problem in report.problems:
            typer.echo(f"invalid: {problem}")
    if not report.valid:
        raise typer.Exit(1)


def adapters_train(
    data: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="Chat examples in OpenAI's format.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Where to write the adapter (new or empty).")],
    base: BaseOption = None,
    config: ConfigOption = None,
    max_rank: MaxRankOption = None,
    rank: Annotated[int, typer.Option(min=1, max=256, help="LoRA rank r.")] = 8,
    alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha (the update is scaled by alpha / r).")] = 16,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="LoRA dropout.")] = 0.05,
    target_modules: Annotated[
        str, typer.Option(metavar="NAMES", help="Comma-separated modules to adapt (q_proj,k_proj,v_proj,o_proj,...).")
    ] = "q_proj,v_proj",
    epochs: Annotated[float, typer.Option(min=0.1, max=100, help="Passes over the file.")] = 3.0,
    learning_rate: Annotated[float, typer.Option(min=1e-7, max=1.0, help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Examples per step.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the adapter's initial weights and the data order.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a LoRA adapter on a chat fine-tuning file with PEFT, formatted with the base model's chat
    template and trained on the answers; on the GPU when there is one, else on the CPU. The result is checked
    as `turnout adapters check` does before it is moved into --out; declare it under adapters: (or push it)
    to serve it.

    Exit status: 0 with a valid adapter in --out; 1 when training ran but its adapter is not valid (nothing
    is written); 2 when the file, the base model or the options cannot be used.
    """
    from gateway.finetune.train import TrainingRefused, TrainOptions, train_adapter

    base_dir, limit, _ = _base_and_rank(base, config, max_rank)
    modules = tuple(m.strip() for m in target_modules.split(",") if m.strip())
    options = TrainOptions(rank, alpha, dropout, modules, epochs, learning_rate, batch_size, seed, limit)
    try:
        trained = train_adapter(data, base_dir, out, options, progress=not quiet)
    except TrainingRefused as exc:
        raise fail(str(exc), USAGE) from None
    except OSError as exc:
        raise fail(f"{data}: cannot read it ({exc.strerror or exc})", USAGE) from None
    if not trained.report.valid:
        for problem in trained.report.problems:
            typer.echo(f"invalid: {problem}", err=True)
        raise fail("the trained adapter is not valid; nothing was written")
    loss = f", final loss {trained.loss:.3f}" if trained.loss is not None else ""
    typer.echo(
        f"trained {out}: {trained.examples} examples, {trained.steps} steps on the {trained.device} in "
        f"{trained.seconds:.1f} s{loss}; valid (LoRA rank {rank} on {', '.join(modules)})"
    )


def register(adapters: typer.Typer) -> None:
    """Add these commands to the ``turnout adapters`` group."""
    adapters.command("check")(adapters_check)
    adapters.command("train")(adapters_train)


__all__ = ["adapters_check", "adapters_train", "register"]
