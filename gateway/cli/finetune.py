"""``turnout finetune``: check a chat fine-tuning file and estimate what training on it costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import USAGE, fail, group, load_or_exit
from gateway.config.model import CostsConfig
from gateway.finetune.check import CheckReport, check, estimate_training, training_context
from gateway.finetune.dataset import Dataset, read_dataset
from gateway.finetune.tokens import ChatTemplateCounter, OpenAICounter, TokenCounter, base_of

app = group("From a training file to a route: check it, and estimate what training on it costs.")

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
FileArgument = Annotated[
    Path, typer.Argument(metavar="FILE.jsonl", help="Chat examples in OpenAI's format, one JSON object a line.")
]
ModelOption = Annotated[
    str, typer.Option("--model", "-m", metavar="MODEL", help="The OpenAI model to fine-tune (its tokenizer).")
]
BaseOption = Annotated[
    Path | None,
    typer.Option(
        "--base", metavar="DIR", help="A base model directory: count with its tokenizer and chat template instead."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _dataset(file: Path) -> Dataset:
    try:
        return read_dataset(file)
    except OSError as exc:
        raise fail(f"{file}: cannot read it ({exc.strerror or exc})", USAGE) from None


def _read(file: Path, counter: TokenCounter) -> CheckReport:
    return check(_dataset(file), counter)


def _counter(model: str, base: Path | None) -> TokenCounter:
    if base is None:
        return OpenAICounter(model, training_context(base_of(model)))
    if not (base / "config.json").is_file():
        raise fail(f"{base}: not a model directory (no config.json)", USAGE)
    try:
        return ChatTemplateCounter(base)
    except (OSError, ValueError) as exc:
        raise fail(f"{base}: cannot read its tokenizer ({exc})", USAGE) from None


@app.command("check")
def finetune_check(
    file: FileArgument, model: ModelOption = DEFAULT_MODEL, base: BaseOption = None, as_json: JsonOption = False
) -> None:
    """Check a chat fine-tuning file: every problem with its line, tokens per example, duplicates, examples
    too long for the target, and too few examples.

    Tokens are counted with the target's tokenizer: tiktoken for an OpenAI model (--model), or the base
    model's own tokenizer and chat template for a LoRA adapter (--base DIR).

    Exit status: 0 when the file can be trained on (warnings may remain); 1 when it cannot (each error is
    listed); 2 when the file or the base model cannot be read.
    """
    report = _read(file, _counter(model, base))
    if as_json:
        typer.echo(json.dumps(report.describe(), indent=2))
    else:
        _print_check(report)
    if not report.usable:
        raise typer.Exit(1)


def _print_check(report: CheckReport) -> None:
    facts = report.describe()
    tokens = facts["tokens"]
    typer.echo(
        f"{facts['file']}: {facts['examples']} examples in {facts['lines']} lines, counted with {facts['tokenizer']}"
    )
    if facts["examples"]:
        typer.echo(
            f"tokens: {tokens['total']:,} in all ({tokens['billed_per_epoch']:,} trained on per epoch); per example "
            f"{tokens['min']:,} min, {tokens['median']:,} median, {tokens['max']:,} max"
            + (f" (the target trains on {report.context:,} at most)" if report.context else "")
        )
    for finding in report.findings:
        where = f"line {finding.line}" if finding.line is not None else "file"
        typer.echo(f"{finding.severity}: {where}: {finding.message}")
    verdict = "usable" if report.usable else "not usable"
    typer.echo(f"{verdict}: {facts['errors']} error(s), {facts['warnings']} warning(s)")


@app.command("estimate")
def finetune_estimate(
    file: FileArgument,
    epochs: Annotated[
        int | None, typer.Option(min=1, max=50, help="Passes over the file (default: what OpenAI's 'auto' picks).")
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    base: BaseOption = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="FILE",
            help="Take prices, GPU throughput and the base model from this configuration.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Estimate what training on a file costs: an OpenAI fine-tune of --model, and a LoRA adapter on the base
    model (--base DIR, or the configuration's base_model.path) at the configured GPU price.

    OpenAI: the file's tokens (each example capped at the training context) x epochs x the training price
    (Turnout's table of OpenAI's published prices, or costs.openai.training_usd_per_1m_tokens). Adapter: the
    same tokens by the base model's tokenizer / costs.vllm.training_tokens_per_second = GPU-hours, x
    costs.vllm.gpu_hour_usd.

    Exit status: 0 with the estimates printed; 1 when the file cannot be trained on (run finetune check);
    2 when the file, the configuration or the base model cannot be read, or no training price is known.
    """
    settings = load_or_exit(config) if config is not None else None
    costs = settings.costs if settings is not None else CostsConfig()
    if base is None and settings is not None:
        base = settings.base_model.path
    dataset = _dataset(file)
    openai_report = check(dataset, _counter(model, None))
    if not openai_report.usable:
        raise fail(f"{file} cannot be trained on as it is: run turnout finetune check {file}")
    adapter_tokens = check(dataset, _counter(model, base)).billed_tokens() if base is not None else None
    found = estimate_training(openai_report, model, costs, epochs, adapter_tokens, str(base or ""))
    if found.openai is None:
        raise fail(
            f"no training price is known for {model}: set costs.openai.training_usd_per_1m_tokens.{model} in the "
            "configuration (--config)",
            USAGE,
        )
    count, passes = len(openai_report.tokens), found.epochs
    rows = [estimate.describe() for estimate in (found.openai, found.adapter) if estimate is not None]
    if as_json:
        typer.echo(json.dumps({"file": str(file), "examples": count, "estimates": rows}, indent=2))
        return
    typer.echo(f"{file}: {count} examples, {passes} epoch(s)" + ("" if epochs else " (OpenAI's default for this size)"))
    for row in rows:
        if row["route"] == "openai fine-tune":
            typer.echo(
                f"OpenAI fine-tune of {row['model']}: {row['training_tokens']:,} training tokens x "
                f"${row['usd_per_1m_training_tokens']:g}/1M = ${row['usd']:,.2f}"
            )
        else:
            typer.echo(
                f"LoRA adapter on {row['base']}: {row['training_tokens']:,} training tokens at "
                f"{row['training_tokens_per_second']:g} tokens/s = {row['gpu_hours']:.4f} GPU-hours x "
                f"${row['gpu_hour_usd']:g}/h = ${row['usd']:,.2f}"
            )


ConfigFileOption = Annotated[
    Path,
    typer.Option("--config", "-c", metavar="FILE", help="The configuration whose openai: route serves the result."),
]
PollOption = Annotated[
    float, typer.Option("--poll-s", min=0.01, max=3600, help="Seconds between two looks at the job.")
]


@app.command("start")
def finetune_start(
    file: FileArgument,
    config: ConfigFileOption,
    model: ModelOption = DEFAULT_MODEL,
    suffix: Annotated[
        str | None, typer.Option(metavar="NAME", help="Up to 64 characters OpenAI adds to the fine-tune's name.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, max=50, help="Passes over the file (default: OpenAI's auto).")
    ] = None,
    follow_job: Annotated[bool, typer.Option("--follow/--no-follow", help="Follow the job until it ends.")] = True,
    poll_s: PollOption = 10.0,
) -> None:
    """Start an OpenAI fine-tune: check the file, upload it (purpose fine-tune), create the job on --model,
    and follow its status and events; on success, print the policy that routes to the new ft: model.

    The job runs at openai.api_base with the key the gateway's OpenAI route uses. Stop following at any
    time (Ctrl-C): `turnout finetune status JOB` follows it again.

    Exit status: 0 when the job succeeded (or was started, with --no-follow); 1 when it failed or was
    cancelled, or the file cannot be trained on; 2 when the configuration or the key cannot be used, or
    OpenAI refused the request.
    """
    import openai

    from gateway.finetune.openai_jobs import client_for, start_job

    settings = load_or_exit(config)
    report = _read(file, _counter(model, None))
    if not report.usable:
        _print_check(report)
        raise fail(f"{file} cannot be trained on as it is")
    try:
        client = client_for(settings.openai)
        job = start_job(client, file, model, suffix, epochs)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), USAGE) from None
    except openai.APIError as exc:
        raise fail(f"OpenAI refused the fine-tune: {exc}", USAGE) from None
    typer.echo(
        f"started {job.id} on {model} ({len(report.tokens)} examples); follow it again with: "
        f"turnout finetune status {job.id} -c {config}"
    )
    if follow_job:
        _follow(client, job.id, poll_s, name=suffix or "fine-tuned")


@app.command("status")
def finetune_status(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id (ftjob-...).")],
    config: ConfigFileOption,
    follow_job: Annotated[bool, typer.Option("--follow/--no-follow", help="Follow the job until it ends.")] = True,
    poll_s: PollOption = 10.0,
    policy: Annotated[
        str, typer.Option(metavar="NAME", help="The policy name in the printed configuration.")
    ] = "fine-tuned",
) -> None:
    """Show (and by default follow) an OpenAI fine-tuning job: its events, its status, and on success the
    policy that routes to the new ft: model.

    Exit status: 0 when the job succeeded, or is still running with --no-follow; 1 when it failed or was
    cancelled; 2 when the configuration or the key cannot be used, or OpenAI does not know the job.
    """
    import openai

    from gateway.finetune.openai_jobs import client_for

    settings = load_or_exit(config)
    try:
        client = client_for(settings.openai)
        if not follow_job:
            job = client.fine_tuning.jobs.retrieve(job_id)
            _ended(job, policy)
            return
    except (OSError, ValueError) as exc:
        raise fail(str(exc), USAGE) from None
    except openai.APIError as exc:
        raise fail(f"OpenAI: {exc}", USAGE) from None
    _follow(client, job_id, poll_s, name=policy)


def _follow(client: Any, job_id: str, poll_s: float, name: str) -> None:
    import openai
    from rich.console import Console

    from gateway.finetune.openai_jobs import Event, follow

    console = Console(highlight=False)

    def on_event(event: Event) -> None:
        console.print(f"  {event.level}: {event.message}")

    with console.status(f"{job_id}: starting") as status:

        def on_status(job: Any) -> None:
            tokens = f", {job.trained_tokens:,} tokens trained" if job.trained_tokens else ""
            status.update(f"{job_id}: {job.status}{tokens}")

        try:
            job = follow(client, job_id, poll_s=poll_s, on_event=on_event, on_status=on_status)
        except openai.APIError as exc:
            raise fail(f"OpenAI: {exc}", USAGE) from None
    _ended(job, name)


def _ended(job: Any, name: str) -> None:
    """Say how the job stands; exit 1 if it failed or was cancelled."""
    from gateway.finetune.openai_jobs import policy_lines

    typer.echo(f"{job.id}: {job.status}")
    if job.status == "succeeded" and job.fine_tuned_model:
        trained = f" ({job.trained_tokens:,} tokens trained)" if job.trained_tokens else ""
        typer.echo(f"fine-tuned model: {job.fine_tuned_model}{trained}")
        typer.echo("route to it: add to the configuration, then call model " + f'"{name}"' + " (or reload):")
        typer.echo(policy_lines(name, job.fine_tuned_model))
    elif job.status in ("failed", "cancelled"):
        error = getattr(job, "error", None)
        why = f": {error.message}" if error is not None and getattr(error, "message", None) else ""
        raise fail(f"the fine-tune {job.status}{why}")
