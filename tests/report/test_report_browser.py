"""The report in a real browser: headless Debian Chromium driven by playwright, from file://, no network.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` package; the
browser bundled by ``playwright install`` is never used. Saves ``test-artifacts/report.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench_core.report.html import build_report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"),
]


def _values(page, table: str, col: int) -> list[float]:
    return page.eval_on_selector_all(
        f"{table} tbody.models tr", f"rows => rows.map(r => parseFloat(r.cells[{col}].getAttribute('data-value')))"
    )


def _open(page, url: str, problems: list[str]) -> None:
    page.goto(url)
    page.wait_for_load_state("load")
    broken = page.eval_on_selector_all(
        "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    problems += [f"image not loaded: {src}" for src in broken]


def test_report_in_chromium(cli_run, tmp_path):
    out = tmp_path / "toy"
    shutil.copytree(cli_run, out)  # the session's run stays untouched for other tests
    index = build_report(out)
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog (unescaped script?): {d.message}"), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            _open(page, index.as_uri(), problems)

            boards = page.locator("table.leaderboard")
            assert boards.count() >= 3  # recon, sample, train (+ model) on the toy dataset
            recon = 'table.leaderboard[data-task="recon"]'
            assert page.locator(f"{recon} tbody.models tr").count() == 2  # two finished models; failed ones apart
            assert page.locator(f"{recon} tbody.baselines tr").inner_text().startswith("mean-image")
            assert page.locator(f"{recon} thead th").count() == 4  # model, images_per_s, toy-mae, mean-gap
            assert "<script>alert(1)</script>" in page.locator(f"{recon} tbody.models").inner_text()  # shown as text
            assert page.locator("table.problems tbody tr").count() == 4  # 2 failed + 2 skipped cells
            assert "toy-3d handles [3]D data" in page.locator("table.problems").inner_text()

            # toy-mae is lower-is-better: first click sorts ascending, second descending.
            header = page.locator(f"{recon} thead th", has_text="toy-mae")
            header.click()
            asc = _values(page, recon, 2)
            assert asc == sorted(asc)
            header.click()
            desc = _values(page, recon, 2)
            assert desc == sorted(desc, reverse=True) and desc != asc
            page.locator(f"{recon} thead th").first.click()
            names = page.eval_on_selector_all(
                f"{recon} tbody.models tr", "rows => rows.map(r => r.cells[0].dataset.value)"
            )
            assert names == sorted(names)
            # Sorting never moves the baselines into the ranking: they stay in their own body, last.
            last = page.eval_on_selector_all(f"{recon} tr", "rows => rows[rows.length - 1].className")
            assert last == "baseline"

            ARTIFACTS.mkdir(exist_ok=True)
            page.locator(f"{recon} thead th", has_text="toy-mae").click()
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

            cell_link = page.locator(f"{recon} tbody a.seed").first
            cell_link.click()
            page.wait_for_load_state("load")
            _open(page, page.url, problems)
            assert page.locator("svg.curve").count() >= 2 and page.locator("img.grid").count() == 2
            assert page.locator(".gallery .item").count() >= 8
            page.screenshot(path=str(ARTIFACTS / "report-cell.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert all(url.startswith("file://") for url in requests), [u for u in requests if not u.startswith("file://")]
