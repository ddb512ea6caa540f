"""Turning the load generator's raw results into the markdown table and the goal checks."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]
DIRECT, BARE, TURNOUT, LITELLM = "direct", "bare", "turnout", "litellm"
LABELS = {
    DIRECT: "upstream directly",
    BARE: "bare pass-through (Starlette + aiohttp)",
    TURNOUT: "Turnout",
    LITELLM: "LiteLLM proxy 1.106.2",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


@dataclass(frozen=True)
class Figures:
    """One target's figures; for the upstream directly they are absolute, for the others what they add."""

    p50: float
    p99: float
    rate: str
    rps: float
    c32_p99: float
    ttft: float
    gap: float
    rss_mb: float | None
    rss_idle_mb: float | None
    errors: int


def figures(raw: Json, name: str, rss_mb: float | None, rss_idle_mb: float | None) -> Figures:
    c1, direct_c1 = raw["c1"][name], raw["c1"][DIRECT]
    stream, direct_stream = raw["stream"][name], raw["stream"][DIRECT]
    blocks = raw["c32"][name]
    p50, p99 = median(c1["ms"]), pct(c1["ms"], 0.99)
    ttft, gap = median(stream["ttft_ms"]), mean(stream["gap_ms"])
    if name != DIRECT:
        p50 -= median(direct_c1["ms"])
        p99 -= pct(direct_c1["ms"], 0.99)
        ttft -= median(direct_stream["ttft_ms"])
        gap -= mean(direct_stream["gap_ms"])
    seconds = sum(b["seconds"] for b in blocks)
    return Figures(
        p50=p50,
        p99=p99,
        rate=ladder_rate(raw["ladder"], name),
        rps=sum(b["requests"] for b in blocks) / seconds if seconds else math.nan,
        c32_p99=median([b["p99_ms"] for b in blocks]),
        ttft=ttft,
        gap=gap,
        rss_mb=rss_mb,
        rss_idle_mb=rss_idle_mb,
        errors=c1["errors"]
        + stream["errors"]
        + sum(b["errors"] for b in blocks)
        + sum(s["errors"] for s in raw["ladder"][name]),
    )


def ladder_rate(ladder: Json, name: str) -> str:
    """The highest rate that held; "≥" when the target never failed (the ladder, or the generator, ended)."""
    steps = ladder[name]
    held = [s["rate"] for s in steps if s["holds"]]
    if not steps:
        return "-"
    if not held:
        return f"none (fails at {steps[0]['rate']:,.0f}/s)"
    best = f"{max(held):,.0f}/s"
    return f"≥ {best}" if all(s["holds"] for s in steps) else best


def generator_note(ladder: Json, rates: list[float]) -> str:
    steps = ladder[DIRECT]
    if all(s["holds"] for s in steps):
        top = steps[-1]["rate"] if steps else 0
        more = "" if len(steps) == len(rates) else " (higher rates were not needed: every gateway had failed)"
        return f"the generator held every rate it was asked for against the upstream directly, up to {top:,.0f}/s{more}"
    held = [s["rate"] for s in steps if s["holds"]]
    top = f"{max(held):,.0f}/s" if held else "none of the rates"
    return (
        f"the Python generator (sharing core 0 with the upstream) could send at most {top} open-loop: higher "
        f"rates are not measured, so a gateway that held {top} is shown as ≥ {top}"
    )


def ladder_table(ladder: Json, names: list[str], late_ms: float) -> list[str]:
    """Per rate: the upstream's p99, and what each gateway added to it; ✗ marks the step that failed."""
    lines = [
        "| rate/s | " + " | ".join(("upstream p99" if n == DIRECT else f"{n} added p99") for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    rates = [s["rate"] for s in ladder[DIRECT]]
    for i, rate in enumerate(rates):
        cells = []
        for name in names:
            steps = ladder[name]
            if i >= len(steps):
                cells.append("")
                continue
            step = steps[i]
            value = step["p99_ms"] if name == DIRECT else step["added_p99_ms"]
            cell = f"{value:.1f}" if name == DIRECT else f"{value:+.1f}"
            cell += " ✓" if step["holds"] else " ✗"
            notes = [f"{step['errors']} errors"] if step["errors"] else []
            notes += ["overloaded"] if step["overloaded"] else []
            notes += ["second try"] if step.get("retried") else []
            notes += [f"generator late {step['lag_p99_ms']:.0f} ms"] if step["lag_p99_ms"] > late_ms else []
            cells.append(cell + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(f"| {rate:,.0f} | " + " | ".join(cells) + " |")
    return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def goals(rows: dict[str, Figures]) -> list[str]:
    t, b, lite = rows.get(TURNOUT), rows.get(BARE), rows.get(LITELLM)
    if t is None or b is None:
        return ["- Turnout or the bare pass-through was not measured: no goal can be checked."]
    lines = [
        f"- Turnout added p50 within 0.2 ms of bare's: {t.p50:+.2f} vs {b.p50:+.2f} ms "
        f"(difference {t.p50 - b.p50:+.2f}): **{verdict(t.p50 - b.p50 <= 0.2)}**",
        f"- Turnout added p99 within 0.5 ms of bare's: {t.p99:+.2f} vs {b.p99:+.2f} ms "
        f"(difference {t.p99 - b.p99:+.2f}): **{verdict(t.p99 - b.p99 <= 0.5)}**",
        f"- Turnout requests/s at c=32 ≥ 80% of bare's: {t.rps:,.0f} vs {b.rps:,.0f} "
        f"({t.rps / b.rps:.0%}): **{verdict(t.rps >= 0.8 * b.rps)}**",
    ]
    if lite is None:
        lines.append("- Turnout requests/s at c=32 ≥ 40x LiteLLM's with p99 < 50 ms: LiteLLM not measured")
    else:
        ratio = t.rps / lite.rps if lite.rps else float("inf")
        ok = ratio >= 40 and t.c32_p99 < 50
        lines.append(
            f"- Turnout requests/s at c=32 ≥ 40x LiteLLM's with p99 < 50 ms: {ratio:.1f}x, p99 "
            f"{t.c32_p99:.1f} ms: **{verdict(ok)}**"
        )
    lines += [
        f"- Turnout added time to first content chunk within 0.3 ms of bare's: {t.ttft:+.2f} vs {b.ttft:+.2f} ms "
        f"(difference {t.ttft - b.ttft:+.2f}): **{verdict(t.ttft - b.ttft <= 0.3)}**",
        f"- Turnout inter-chunk gap change within 0.2 ms of bare's: {t.gap:+.3f} vs {b.gap:+.3f} ms "
        f"(difference {t.gap - b.gap:+.3f}): **{verdict(t.gap - b.gap <= 0.2)}**",
    ]
    rss = f"{t.rss_mb:.0f} MB" if t.rss_mb is not None else "not read"
    lines.append(f"- Turnout RSS < 120 MB: {rss}: **{verdict(t.rss_mb is not None and t.rss_mb < 120)}**")
    return lines


def row(name: str, f: Figures) -> str:
    rss = f"{f.rss_mb:.0f} MB" if f.rss_mb is not None else "-"
    if f.rss_mb is not None and f.rss_idle_mb is not None:
        rss += f" ({f.rss_idle_mb:.0f} idle)"
    if name == DIRECT:
        return (
            f"| {LABELS[name]} | round trip {f.p50:.2f} / {f.p99:.2f} | {f.rate} sent by the generator | "
            f"{f.rps:,.0f} | {f.c32_p99:.1f} | round trip {f.ttft:.2f} | gap {f.gap:.2f} | {rss} |"
        )
    return (
        f"| {LABELS[name]} | {f.p50:+.2f} / {f.p99:+.2f} | {f.rate} | {f.rps:,.0f} | {f.c32_p99:.1f} | "
        f"{f.ttft:+.2f} | {f.gap:+.3f} | {rss} |"
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {today}"


def render(raw: Json, plan: Json, rss: dict[str, float], skipped: dict[str, str], meta: Json) -> str:
    names = [t["name"] for t in plan["targets"] if t["name"] not in raw["failed"]]
    skipped = {**skipped, **raw["failed"]}
    rows = {n: figures(raw, n, rss.get(n), meta["rss_idle"].get(n)) for n in names}
    ladder = plan["ladder"]
    out = [
        "# What each gateway adds per request",
        "",
        f"Machine: {machine()}. Upstream and load generator on core 0, each gateway alone on core 1, one worker.",
        "",
        "| target | added p50 / p99 at c=1 (ms) | highest rate with added p99 ≤ 10 ms | requests/s at c=32 "
        "| p99 at c=32 (ms) | added time to first content chunk, p50 (ms) | inter-chunk gap change (ms) "
        "| RSS after load (before) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out += [row(n, rows[n]) for n in names]
    out += [f"| {LABELS[n]} | not measured ({why}) | | | | | | |" for n, why in skipped.items()]
    out += ["", "Goals (Turnout against the bare pass-through and LiteLLM proxy):", "", *goals(rows), ""]
    out += ["", "Rate ladder, step by step (ms):", "", *ladder_table(raw["ladder"], names, ladder["late_ms"]), ""]
    errors = {n: f.errors for n, f in rows.items() if f.errors}
    c32_tool = meta["c32_tool"]
    out += [
        "How: every phase interleaved, small blocks in rotation over the targets, "
        f"{plan['rounds']} rounds, after a warm-up. c=1: {plan['c1_requests']} sequential requests per block; "
        f"streaming: {plan['stream_requests']} streams per block of {meta['chunks']} content chunks "
        f"{meta['gap_ms']:g} ms apart; c=32: {plan['c32_seconds']:g} s closed-loop blocks by {c32_tool} "
        "(requests/s over all blocks, p99 the median of the blocks'); rate ladder: open loop at "
        f"{', '.join(f'{r:g}' for r in ladder['rates'])}/s, {ladder['seconds']:g} s per step "
        f"(at least {ladder['min_requests']} requests), a step holds with every answer 200 and p99 at most "
        f"{ladder['limit_ms']:g} ms above the upstream's at that rate; a failed step is measured once more, and a "
        "target stops climbing when it fails again. "
        f"Ladder: {generator_note(raw['ladder'], ladder['rates'])}.",
        "",
        f"Errors: {', '.join(f'{n} {e}' for n, e in errors.items()) if errors else 'none'}. "
        f"Phases took {', '.join(f'{k} {v:.0f} s' for k, v in raw['phase_seconds'].items())}; "
        f"the whole comparison {meta['total_s']:.0f} s. Other processes on the machine used "
        f"{meta['others_cpu_s']:.0f} CPU-seconds meanwhile ({meta['others_cpu_s'] / meta['total_s']:.0%} of one "
        "core): the more, the noisier the figures."
        + (
            " **The machine was busy with other work during this run: run again before quoting it.**"
            if meta["others_cpu_s"] > 0.25 * meta["total_s"]
            else ""
        ),
    ]
    return "\n".join(out) + "\n"
