"""The report in a real browser: headless Debian Chromium driven by playwright, from file://, no network.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` package; the
browser bundled by ``playwright install`` is never used. At a desktop (1280x800) and a phone
(390x844) viewport, the index, a cell page and the comparison strip load every image and never
scroll the page body sideways (wide tables scroll in their own box); keyboard focus reaches the
sort buttons and the enlarge control. Screenshots land in ``test-artifacts/``.
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
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

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
    broken = page.eval_on_selector_all(  # img[src]: the enlarge dialog's picture is empty until opened
        "img[src]", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    problems += [f"image not loaded: {src}" for src in broken]
    # The page body never scrolls sideways: wide tables and images scroll inside their own box.
    wide = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    if wide[0] > wide[1]:
        problems.append(f"{url}: the page is {wide[0]} px wide in a {wide[1]} px window")


def _tab_to(page, selector: str, limit: int = 400) -> bool:
    """Press Tab until the focused element matches ``selector``; whether it got there."""
    page.locator("body").focus()
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
            return True
    return False


def _watch(page, problems: list[str], requests: list[str]) -> None:
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog (unescaped script?): {d.message}"), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))


def test_report_in_chromium(cli_run, tmp_path):
    out = tmp_path / "toy"
    shutil.copytree(cli_run, out)  # the session's run stays untouched for other tests
    index = build_report(out)
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORTS["desktop"])
            _watch(page, problems, requests)
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
            # Pictures and headline numbers come before the settings, which are one line each, the rest folded.
            order = page.evaluate("() => ['.headline', 'img.grid', 'table.numbers'].map("
                                  "s => document.querySelector(s).getBoundingClientRect().top)")  # fmt: skip
            assert order == sorted(order)
            assert not page.locator("table.numbers details code").first.is_visible()
            page.screenshot(path=str(ARTIFACTS / "report-cell.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert all(url.startswith("file://") for url in requests), [u for u in requests if not u.startswith("file://")]


def _strip_href(index: Path) -> str:
    html = index.read_text()
    start = html.index('<a class="strip-link" href="') + len('<a class="strip-link" href="')
    return html[start : html.index('"', start)]


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_pages_fit_the_window_and_work_by_keyboard(cli_run, tmp_path, viewport: str):
    out = tmp_path / "toy"
    shutil.copytree(cli_run, out)
    index = build_report(out)
    cell = next(out.glob("cells/toy-ae*toy*seed0/index.html"))
    strip = out / _strip_href(index)
    problems: list[str] = []
    requests: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORTS[viewport])
            _watch(page, problems, requests)
            for name, path in (("index", index), ("cell", cell), ("strip", strip)):
                _open(page, path.as_uri(), problems)
                page.screenshot(path=str(ARTIFACTS / f"report-{name}-{viewport}.png"), full_page=True)
            # Keyboard: the sort buttons of the index take focus and sort on Enter.
            _open(page, index.as_uri(), problems)
            assert _tab_to(page, "table.leaderboard thead th"), "Tab never reached a sort button"
            page.keyboard.press("Enter")
            sorted_by = page.evaluate("() => document.activeElement.getAttribute('aria-sort')")
            assert sorted_by in ("ascending", "descending")
            # The strip: every row has its pictures, and the enlarge control opens by keyboard and closes on Escape.
            _open(page, strip.as_uri(), problems)
            rows = page.locator('table.strip[data-task="recon"] tbody tr')
            columns = page.locator('table.strip[data-task="recon"] thead th.item-head').count()
            assert rows.count() >= 4 and columns == 8  # ground truth, 2 models, baselines; 6 kept + worst + median
            assert page.locator('table.strip[data-task="recon"] tbody img').count() == rows.count() * columns
            assert _tab_to(page, "a.zoom"), "Tab never reached an enlarge control"
            src = page.evaluate("() => document.activeElement.getAttribute('href')")
            page.keyboard.press("Enter")
            view = page.locator("dialog.zoom-view")
            assert view.get_attribute("open") is not None and view.locator("img").get_attribute("src") == src
            big = view.locator("img").bounding_box()
            assert big["width"] > 96 and big["width"] <= VIEWPORTS[viewport]["width"]
            page.screenshot(path=str(ARTIFACTS / f"report-strip-enlarged-{viewport}.png"))
            page.keyboard.press("Escape")
            assert view.get_attribute("open") is None
        finally:
            browser.close()
    assert not problems, problems
    assert all(url.startswith("file://") for url in requests), [u for u in requests if not u.startswith("file://")]
