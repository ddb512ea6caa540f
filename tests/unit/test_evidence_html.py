"""The report's HTML page opened in a real headless browser (Debian's Chromium, installed by ``make tools``):
its sections and plots are in the page the browser built, and a screenshot shows them drawn (the plots'
bars in their colour, in as many separate bands as there are plots)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from gateway.evidence.html import render
from gateway.evidence.report import report
from gateway.evidence.store import ArmRow

ROW = ArmRow(
    at=0.0, request_id="r", policy="support-bot", rule="pricing", intent="pricing", arm="adapter:formal",
    primary=True, status=200, error=None, seconds=0.1, ttft_seconds=None, prompt_tokens=10, completion_tokens=5,
    usd=0.002, agreement=None, citations=None, best_score=None,
)  # fmt: skip
BAR = (0x3B, 0x6F, 0xB6)


def _rows() -> list[ArmRow]:
    rows = []
    for i in range(30):
        for intent in ("pricing", "returns"):
            rows.append(replace(ROW, request_id=f"{intent}{i}", intent=intent, seconds=0.1 + i / 1000))
            rows.append(
                replace(
                    ROW,
                    request_id=f"{intent}{i}",
                    intent=intent,
                    arm="rag:handbook+adapter:formal",
                    primary=False,
                    seconds=0.25,
                    usd=0.0008,
                    agreement=0.8 + (i % 5) / 25,
                    citations=3,
                )
            )
    return rows  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is missing: `make tools` installs Debian's package")
    return found


def _browser(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_the_page_renders_in_a_real_browser_with_its_sections_and_plots(tmp_path: Path) -> None:
    rows = _rows()
    groups = report(rows)
    page = tmp_path / "report.html"
    page.write_text(render(groups, rows, "24h"), encoding="utf-8")

    dom = _browser(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    built = dom.stdout
    assert built.count('<section class="group"') == 2  # one per intent
    assert "support-bot: intent pricing" in built
    assert "route these requests to rag:handbook+adapter:formal" in built
    for kind in ("latency", "cost", "agreement"):
        assert built.count(f"{kind}-plot") == 2
    assert built.count("<rect") >= 2 * (4 + 2 + 10)  # bars: latency (2 per arm), cost, ten agreement columns

    shot = tmp_path / "report.png"
    taken = _browser(page, f"--screenshot={shot}", "--window-size=1280,2400")
    assert taken.returncode == 0, taken.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    bands = _bands_with(image, BAR)
    assert len(bands) >= 4, bands  # the plots' rows of bars, drawn apart from each other
    assert image.getcolors(maxcolors=1_000_000) is not None


def _bands_with(image: Image.Image, colour: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Vertical spans (first and last row) of the image's rows holding ``colour``, split where rows lack it."""
    pixels = image.load()
    assert pixels is not None
    width, height = image.size
    rows = [y for y in range(height) if any(pixels[x, y] == colour for x in range(0, width, 2))]
    bands: list[tuple[int, int]] = []
    for y in rows:
        if bands and y - bands[-1][1] <= 3:
            bands[-1] = (bands[-1][0], y)
        else:
            bands.append((y, y))
    return bands
