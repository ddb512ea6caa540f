"""The report as one self-contained HTML page: a browser opens it from disk, with no server, no script and
nothing fetched. Per group (policy and intent): the recommendation, the arms' table, and three plots drawn
as inline SVG: latency (p50 and p95) and dollars per 1,000 requests per arm, and each shadow arm's
distribution of agreement with the primary answer.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

from gateway.evidence.report import ArmFigures, Group
from gateway.evidence.store import ArmRow

_BAR = "#3b6fb6"
_BAR_LIGHT = "#9bb7e0"
_WIDTH, _ROW, _LABEL = 560, 26, 220
_BINS = 10

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2433; max-width: 1200px; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { padding: 0.3rem 0.8rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } tr:nth-child(even) { background: #f3f5f9; }
.recommendation { background: #eef4ea; border-left: 4px solid #4c8c3a; padding: 0.6rem 1rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5rem; } figure { margin: 0; }
figcaption { font-size: 0.9rem; color: #556; } svg text { font-size: 12px; fill: #1d2433; }
"""


def render(groups: Sequence[Group], rows: Iterable[ArmRow], since: str, now: float | None = None) -> str:
    """The page for ``groups`` (from :func:`gateway.evidence.report.report` over ``rows``)."""
    agreements: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        if row.agreement is not None:
            key = f"intent {row.intent}" if row.intent else f"rule {row.rule}"
            agreements.setdefault((row.policy, key, row.arm), []).append(row.agreement)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now if now is not None else time.time()))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Turnout: shadow arms report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Shadow arms: fine-tune, adapter or RAG, per intent</h1>",
        f"<p>The last {html.escape(since)} of recorded requests, made {stamp}. Each shadow arm beside the answer "
        "the clients got (the primary).</p>",
    ]
    if not groups:
        parts.append('<p id="empty">Nothing recorded yet: turn on shadow arms in a policy.</p>')
    for number, group in enumerate(groups, start=1):
        parts.append(_group(number, group, agreements))
    parts.append("</body></html>")
    return "\n".join(parts)


def _group(number: int, group: Group, agreements: dict[tuple[str, str, str], list[float]]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(arm.arm)}{' (primary)' if arm.primary else ''}</td><td>{arm.requests:,}</td>"
        f"<td>{arm.p50_s * 1000:.0f}</td><td>{arm.p95_s * 1000:.0f}</td><td>{arm.usd_per_1000:.4f}</td>"
        f"<td>{'-' if arm.agreement is None else f'{arm.agreement:.2f}'}</td><td>{arm.error_rate:.1%}</td></tr>"
        for arm in group.arms
    )
    shadows = [arm for arm in group.arms if not arm.primary]
    distributions = {arm.arm: agreements.get((group.policy, group.key, arm.arm), []) for arm in shadows}
    return "\n".join(
        [
            f'<section class="group" id="group-{number}">',
            f"<h2>{e(group.policy)}: {e(group.key)}</h2>",
            f'<p class="recommendation">{e(group.recommendation)}</p>',
            "<table><tr><th>arm</th><th>requests</th><th>p50 ms</th><th>p95 ms</th><th>$ / 1k requests</th>"
            f"<th>agreement</th><th>errors</th></tr>{rows}</table>",
            '<div class="plots">',
            _figure("latency", "Latency per arm: p50 (dark) / p95 (light), ms", _latency(group.arms)),
            _figure("cost", "US dollars per 1,000 requests per arm", _cost(group.arms)),
            _figure("agreement", "Agreement with the primary answer: requests per tenth", _histograms(distributions)),
            "</div></section>",
        ]
    )


def _figure(kind: str, caption: str, svg: str) -> str:
    return f'<figure class="plot {kind}-plot"><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>'


def _bars(labels: list[str], series: list[tuple[list[float], str]], unit: str) -> str:
    """Horizontal bars: one row per label, one bar per series (drawn over each other, widest first)."""
    top = max((value for values, _ in series for value in values), default=0.0) or 1.0
    height = _ROW * len(labels) + 10
    shapes = []
    for index, label in enumerate(labels):
        y = 5 + index * _ROW
        shapes.append(f'<text x="0" y="{y + 16}">{html.escape(label[:34])}</text>')
        for values, color in series:
            width = max(1.0, (_WIDTH - _LABEL - 120) * values[index] / top)
            shapes.append(f'<rect x="{_LABEL}" y="{y + 3}" width="{width:.1f}" height="{_ROW - 8}" fill="{color}"/>')
        widest = max(values[index] for values, _ in series)
        said = " / ".join(f"{values[index]:.4g}" for values, _ in reversed(series))  # p50 / p95 for latency
        shapes.append(f'<text x="{_LABEL + 6 + (_WIDTH - _LABEL - 120) * widest / top:.1f}" y="{y + 16}">'
                      f"{said}{unit}</text>")  # fmt: skip
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}">{"".join(shapes)}</svg>'


def _latency(arms: Sequence[ArmFigures]) -> str:
    labels = [arm.arm for arm in arms]
    p95 = [arm.p95_s * 1000 for arm in arms]
    p50 = [arm.p50_s * 1000 for arm in arms]
    return _bars(labels, [(p95, _BAR_LIGHT), (p50, _BAR)], " ms")  # p95 first: the p50 bar is drawn on top


def _cost(arms: Sequence[ArmFigures]) -> str:
    return _bars([arm.arm for arm in arms], [([arm.usd_per_1000 for arm in arms], _BAR)], " $")


def _histograms(distributions: dict[str, list[float]]) -> str:
    """One row of ten columns per shadow arm: how many of its answers agreed in each tenth from 0 to 1."""
    height = 70
    shapes = []
    for index, (arm, values) in enumerate(distributions.items()):
        counts = [0] * _BINS
        for value in values:
            counts[min(_BINS - 1, max(0, int(value * _BINS)))] += 1
        top = max(counts) or 1
        base = index * (height + 24) + height
        shapes.append(f'<text x="0" y="{base - height + 12}">{html.escape(arm[:40])}</text>')
        for column, count in enumerate(counts):
            bar = (height - 20) * count / top
            x = _LABEL + column * 30
            shapes.append(f'<rect x="{x}" y="{base - bar:.1f}" width="26" height="{bar:.1f}" fill="{_BAR}"/>')
        shapes.append(f'<text x="{_LABEL}" y="{base + 14}">0</text><text x="{_LABEL + 290}" y="{base + 14}">1</text>')
    total = max(1, len(distributions)) * (height + 24)
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{total}">{"".join(shapes)}</svg>'


__all__ = ["render"]
