"""Cell pages read like a results section: pictures and headline numbers first, settings as one line."""

from __future__ import annotations

import json
import re
from html import unescape

from bench_core.report.html import build_report
from bench_core.report.readable import LINE_ITEMS, settings_line

SSIM_SETTINGS = {
    "data_range": 1.0, "dims": 2, "std": "population (ddof=0)", "out_of_range": "error", "preset": "gaussian",
    "win_size": 11, "sigma": 1.5, "K1": 0.01, "K2": 0.03, "weights": [0.1, 0.9], "clip": False,
    "reduction": "mean SSIM map per channel, mean over channels per item, then mean over items",
}  # fmt: skip


def test_settings_line_keeps_short_settings_in_order_and_counts_the_rest() -> None:
    line = settings_line(SSIM_SETTINGS)
    # Long strings and lists stay in the full settings; numbers print as %g, flags as yes/no.
    shown = ["data range 1", "dims 2", "std population (ddof=0)", "out of range error", "preset gaussian",
             "win size 11", "sigma 1.5", "K1 0.01"]  # fmt: skip
    assert line == ", ".join(shown[:LINE_ITEMS]) + ", … (2 more)"  # K2 and clip did not fit
    assert settings_line({"clip": False, "scale": float("inf")}) == "clip no, scale inf"
    assert settings_line({}) == ""


def test_an_unavailable_metric_shows_only_its_reason() -> None:
    unavailable = {"status": "unavailable", "reason": "FID Inception weights not found", "weights": "unavailable"}
    assert settings_line(unavailable) == "unavailable: FID Inception weights not found"
    assert settings_line({"status": "unavailable"}) == "unavailable: no reason given"


def test_cell_page_order_headline_numbers_and_folded_settings(tmp_path, make_store) -> None:
    fid = {"value": float("nan"), "higher": False,
           "settings": {"status": "unavailable", "reason": "FID Inception weights not found", "resize": "299"}}
    quiet = {"value": 0.3, "higher": None, "settings": {"data_range": 1.0}}
    metrics = {"ssim": {"value": 0.8, "std": 0.05, "n": 4, "settings": SSIM_SETTINGS}, "fid": fid, "spread": quiet}
    out = make_store(tmp_path / "r", "s", [("a", "d", 0, metrics, {"ssim": [0.7, 0.8, 0.9, 0.8]})])
    build_report(out)
    page = (out / "cells" / "a__d__seed0" / "index.html").read_text()
    positions = [page.index(marker) for marker in ('class="headline"', "<h2>Image grids</h2>", "<h2>Numbers</h2>",
                                                   "<h2>Training curves</h2>", "<summary>Configuration</summary>",
                                                   "<summary>Provenance")]  # fmt: skip
    assert positions == sorted(positions)
    headline = page[page.index('class="headline"') : page.index("<h2>Image grids</h2>")]
    # Ranked metrics are headline by default (rows stored without a reading); an unranked one is not.
    assert "recon · ssim" in headline and "recon · fid" in headline and "spread" not in headline
    assert "0.8 ± 0.05" in headline and "unavailable" in headline
    numbers = unescape(page[page.index("<h2>Numbers</h2>") : page.index("<h2>Training curves</h2>")])
    stored = dict(sorted(SSIM_SETTINGS.items()))  # the store keeps settings as JSON with sorted keys
    assert f'<span class="line">{settings_line(stored)}</span>' in numbers
    assert '<span class="line">unavailable: FID Inception weights not found</span>' in numbers
    # The full settings are still there, folded, exactly as stored.
    folded = re.findall(r"<summary>full settings</summary><code>([^<]*)</code>", numbers)
    ssim = next(json.loads(text) for text in folded if '"preset"' in text)
    assert {k: ssim[k] for k in SSIM_SETTINGS} == SSIM_SETTINGS
    assert "<details" in page[page.index("<summary>Provenance") - 40 : page.index("<summary>Provenance")]


def test_headline_numbers_follow_the_suites_metric_order(tmp_path, make_store) -> None:
    from bench_core.results import load_results

    metrics = {"alpha": {"value": 0.5}, "zeta": {"value": 0.25}}
    out = make_store(tmp_path / "r", "s", [("a", "d", 0, metrics, None)])
    (out / "suite.yaml").write_text("name: s\nmetrics: [zeta, {plugin: alpha, options: {k: 1}}]\n")
    data = load_results(out)
    assert data.metric_order == ["zeta", "alpha"]
    assert [data.metric_rank(m) for m in ("zeta", "alpha.part", "other")] == [0, 1, 2]
    build_report(out)
    page = (out / "cells" / "a__d__seed0" / "index.html").read_text()
    headline = page[page.index('class="headline"') : page.index("<h2>Image grids</h2>")]
    assert headline.index("recon · zeta") < headline.index("recon · alpha")  # the store keeps them by name
    numbers = page[page.index("<h2>Numbers</h2>") : page.index("<h2>Training curves</h2>")]
    assert numbers.index(">zeta") < numbers.index(">alpha") < numbers.index(">images_per_s")  # the train row last
    # The leaderboard's and the exports' columns follow the suite too; by name without a suite file.
    from bench_core.export import export
    from bench_core.tables import build_tables

    (table,) = build_tables(data.results, data.per_item, data.metric_rank)
    assert [name for name, _ in table.metrics] == ["zeta", "alpha", "images_per_s"]  # not a suite metric: last
    index = (out / "index.html").read_text()
    assert index.index(">zeta ") < index.index(">alpha ")
    assert export(out, "markdown").index("zeta") < export(out, "markdown").index("alpha")
    assert [name for name, _ in build_tables(data.results)[0].metrics] == ["alpha", "images_per_s", "zeta"]
    (out / "suite.yaml").write_text("metrics: [unclosed\n")
    assert load_results(out).metric_order == []
