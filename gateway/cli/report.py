"""``turnout report``: what the shadow arms recorded, per policy and intent, with a recommendation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import USAGE, SinceOption, fail, load_or_exit, read_evidence


def report_command(
    config: Annotated[Path, typer.Option("--config", "-c", metavar="FILE", help="Where the evidence is kept.")],
    since: SinceOption = "24h",
    min_agreement: Annotated[float, typer.Option(min=-1, max=1, help="Agreement an arm needs.")] = 0.85,
    max_error_rate: Annotated[float, typer.Option(min=0, max=1, help="Errors an arm may have.")] = 0.05,
    min_requests: Annotated[int, typer.Option(min=1, help="Requests a group needs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    html_file: Annotated[
        Path | None, typer.Option("--html", metavar="FILE", help="Also write the report as a page with plots.")
    ] = None,
) -> None:
    """Per policy and intent (or rule), each shadow arm beside the primary answer: requests, p50 and p95
    latency, dollars per 1,000 requests, agreement with the primary answer, error rate; and a
    recommendation stating its numbers. Read from shadows.store, offline (GET /admin/report on a running
    gateway says the same).

    With --html FILE the report is also written as one self-contained page (plots of latency, cost and
    agreement per arm) that a browser opens from disk.

    Exit status: 0 with the report printed (empty when nothing is recorded yet); 2 when the configuration
    cannot be used, --since is not a span, or the page cannot be written.
    """
    from gateway.evidence.html import render
    from gateway.evidence.report import Thresholds, report

    settings = load_or_exit(config)
    rows = read_evidence(settings.shadows, since, lambda store, cutoff: store.read(since=cutoff)) or []
    groups = report(rows, Thresholds(min_agreement, max_error_rate, min_requests))
    if html_file is not None:
        try:
            html_file.write_text(render(groups, rows, since), encoding="utf-8")
        except OSError as exc:
            raise fail(f"{html_file}: cannot write it ({exc.strerror or exc})", USAGE) from None
    if as_json:
        typer.echo(json.dumps({"since": since, "groups": [g.describe() for g in groups]}, indent=2))
        return
    if not groups:
        typer.echo(f"nothing recorded in the last {since}: turn on shadow arms in a policy (see the README)")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    for group in groups:
        table = Table(title=f"{group.policy}: {group.key}")
        for column in ("arm", "requests", "p50 ms", "p95 ms", "$ / 1k", "agreement", "errors"):
            table.add_column(column, justify="left" if column == "arm" else "right")
        for arm in group.arms:
            agreement = f"{arm.agreement:.2f}" if arm.agreement is not None else "-"
            name = arm.arm + (" (primary)" if arm.primary else "")
            table.add_row(name, f"{arm.requests:,}", f"{arm.p50_s * 1000:.0f}", f"{arm.p95_s * 1000:.0f}",
                          f"{arm.usd_per_1000:.4f}", agreement, f"{arm.error_rate:.1%}")  # fmt: skip
        console.print(table)
        console.print(group.recommendation, highlight=False)


__all__ = ["report_command"]
