"""Bootstrap intervals, ties, the comparability gate, and Markdown/LaTeX showing the HTML's numbers."""

import re
from html import unescape

import numpy as np
import pytest

from bench_core import stats
from bench_core.report.html import build_report
from bench_core.tables import build_tables, to_latex, to_markdown


def rows(*specs):
    """(model, seed, value, settings) -> stored-row dicts of metric m (higher is better) on d/recon."""
    return [
        {"model": model, "dataset": "d", "seed": seed, "task": "recon", "metric": "m", "value": value, "std": 0.1,
         "n": 4, "higher_is_better": True, "settings": settings or {"data_range": 1.0}, "cell_key": f"{model}{seed}"}
        for model, seed, value, settings in specs
    ]  # fmt: skip


def test_bootstrap_is_deterministic_and_hand_checked():
    values = [0.3, 0.9, 0.4, 0.7, 0.1]
    assert stats.bootstrap_ci(values) == stats.bootstrap_ci(list(values))
    # Two values: resampled means are 1 (p=1/4), 1.5 (1/2) or 2 (1/4): the 2.5% and 97.5% points are 1 and 2.
    assert stats.bootstrap_ci([1.0, 2.0]) == (1.0, 2.0)
    assert stats.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert stats.bootstrap_ci([1.0]) is None and stats.bootstrap_ci([1.0, float("nan")]) is None
    # Large normal sample: the percentile interval approaches mean ± 1.96 σ/√n.
    x = np.random.default_rng(1).normal(5.0, 2.0, 400)
    lo, hi = stats.bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.05) and hi == pytest.approx(x.mean() + half, abs=0.05)


def test_chunked_bootstrap_draws_the_same_resamples(monkeypatch):
    x = np.random.default_rng(2).random(50)
    cached = stats.bootstrap_means(x, n_boot=300)
    monkeypatch.setattr(stats, "_CACHE_LIMIT", 10)
    monkeypatch.setattr(stats, "_CHUNK", 120)
    np.testing.assert_array_equal(stats.bootstrap_means(x, n_boot=300), cached)


def test_interval_over_seeds_else_items_and_ties():
    items = {"b0": [0.55, 0.6, 0.65, 0.7], "c0": [0.1, 0.12, 0.11, 0.13]}
    per_item = {(key, "recon", "m"): {f"i{i}": v for i, v in enumerate(values)} for key, values in items.items()}
    (table,) = build_tables(rows(("a", 0, 0.5, None), ("a", 1, 0.7, None), ("b", 0, 0.62, None),
                                 ("c", 0, 0.115, None)), per_item)  # fmt: skip
    a, b, c = (table.rows[m]["m"] for m in "abc")
    assert a.ci == (0.5, 0.7) and a.ci_over == "seeds" and a.values == [0.5, 0.7] and a.seeds == [0, 1]
    assert b.ci_over == "items" and b.ci == stats.bootstrap_ci(items["b0"])
    assert b.best and not a.best
    assert a.tie and a.test is None  # no pairs (two seeds against one): [0.5, 0.7] overlaps b's interval
    # c is below on all 4 items, but 4 pairs cannot reach 0.05: exact two-sided p = 2 / 2**4.
    assert not c.best and c.test.over == "items" and c.test.n == 4 and c.test.p == c.test.p_holm == 0.125
    assert c.tie
    assert b.ci_text() == f"[{b.ci[0]:.4g}, {b.ci[1]:.4g}]"
    (no_items,) = build_tables(rows(("x", 0, 0.5, None)))
    assert no_items.rows["x"]["m"].ci is None and no_items.rows["x"]["m"].ci_text() == "n/a"


def test_counters_do_not_split_but_settings_do_and_are_explained():
    clamps = rows(("a", 0, 0.5, {"data_range": 1.0, "pred_clamped": 3, "pred_values": 9}),
                  ("b", 0, 0.9, {"data_range": 1.0, "pred_clamped": 0, "pred_values": 9}))  # fmt: skip
    (table,) = build_tables(clamps)
    assert table.incomparable == [] and table.rows["b"]["m"].best
    presets = rows(("a", 0, 0.5, {"data_range": 1.0, "preset": "skimage"}),
                   ("b", 0, 0.9, {"data_range": 1.0, "preset": "gaussian"}),
                   ("c", 0, 0.7, {"data_range": 1.0, "preset": "gaussian"}))  # fmt: skip
    (table,) = build_tables(presets)
    assert table.incomparable == ["m"]
    assert not any(agg.best or agg.tie for aggs in table.rows.values() for agg in aggs.values())
    assert table.why["m"] == 'preset: "skimage" (a); "gaussian" (b, c)'
    md = to_markdown([table])
    assert 'preset: "skimage" (a); "gaussian" (b, c)' in md and "Not ranked" in md
    assert "not ranked, m: preset" in to_latex([table])


def test_markdown_and_latex_show_the_html_numbers(tmp_path, make_store):
    out = make_store(tmp_path / "r", "s", [
        ("a", "d", 0, {"ssim": {"value": 0.81234, "std": 0.05, "n": 4}}, {"ssim": [0.8, 0.85, 0.75, 0.85]}),
        ("b", "d", 0, {"ssim": {"value": 0.7, "std": 0.02, "n": 4}}, {"ssim": [0.69, 0.7, 0.71, 0.7]}),
        ("b", "d", 1, {"ssim": {"value": 0.72, "std": 0.02, "n": 4}}, {"ssim": [0.7, 0.72, 0.74, 0.72]}),
    ])  # fmt: skip
    html = (build_report(out)).read_text()
    shown = [unescape(v) for v in re.findall(r'<span class="v">([^<]*)</span>', html)]
    cis = [unescape(v) for v in re.findall(r'<span class="ci">95% CI ([^<(]*)', html)]
    from bench_core.export import export

    md, tex = export(out, "markdown"), export(out, "latex")
    assert "0.8123 ± 0.05" in shown and "0.71 ± 0.014" in shown
    for value in shown:
        assert value in md and value.replace("±", r"$\pm$") in tex
    for ci in (c.strip() for c in cis if c.strip() != "n/a"):
        assert ci in md and ci in tex
    assert "**0.8123 ± 0.05**†" in md and r"\textbf{0.8123 $\pm$ 0.05}" in tex
