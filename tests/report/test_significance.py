"""Paired significance: the Wilcoxon signed-rank test against the best, Holm-corrected per column."""

from __future__ import annotations

import json
import re
from html import unescape

import numpy as np
import pytest
from scipy.stats import wilcoxon

from bench_core import stats
from bench_core.report.html import build_report
from bench_core.tables import build_tables


def test_wilcoxon_p_hand_checked_and_against_scipy() -> None:
    # Six positive differences: the exact two-sided p is 2 / 2**6 (only the all-positive sign pattern, twice).
    assert stats.wilcoxon_p([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]) == (pytest.approx(2 / 64), 6)
    # Zero differences are dropped from the test (Wilcoxon's convention) but counted as pairs.
    assert stats.wilcoxon_p([1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 7])[0] == pytest.approx(2 / 64)
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 80), rng.normal(0.2, 1, 80)
    assert stats.wilcoxon_p(a, b) == (pytest.approx(wilcoxon(a, b).pvalue), 80)
    assert stats.wilcoxon_p([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == (1.0, 3)  # identical: not different
    assert stats.wilcoxon_p([1.0, float("nan"), 2.0], [0.0, 1.0, float("inf")]) is None  # one finite pair left
    with pytest.raises(ValueError, match="differ in length: 2 and 3"):
        stats.wilcoxon_p([1.0, 2.0], [1.0, 2.0, 3.0])


def test_holm_hand_checked() -> None:
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> running maximum 0.03, 0.06, 0.06.
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0] and stats.holm([0.2]) == [0.2] and stats.holm([]) == []


def _rows(specs):
    return [{"model": model, "dataset": "d", "seed": seed, "task": "recon", "metric": "m", "value": value,
             "n": 10, "higher_is_better": True, "settings": {"data_range": 1.0}, "cell_key": f"{model}{seed}"}
            for model, seed, value in specs]  # fmt: skip


def test_per_item_tests_pair_by_id_and_are_holm_corrected_across_the_column() -> None:
    best = {f"i{i}": 0.8 + 0.01 * i for i in range(10)}
    lower = {k: v - 0.02 - 0.001 * i for i, (k, v) in enumerate(best.items())}  # below on every item
    mixed = {k: v + (0.01 if i % 2 else -0.011) for i, (k, v) in enumerate(best.items())}
    mixed = dict([*reversed(mixed.items()), ("only_here", 0.0)])  # other order, an unpaired extra item
    per_item = {("a0", "recon", "m"): best, ("b0", "recon", "m"): lower, ("c0", "recon", "m"): mixed}
    means = {k: float(np.mean(list(v.values()))) for k, v in (("a", best), ("b", lower), ("c", mixed))}
    (table,) = build_tables(_rows([(m, 0, means[m]) for m in "abc"]), per_item)
    a, b, c = (table.rows[m]["m"] for m in "abc")
    assert a.best and a.test is None
    ids = sorted(best)
    p_b = wilcoxon([best[k] for k in ids], [lower[k] for k in ids]).pvalue
    p_c = wilcoxon([best[k] for k in ids], [mixed[k] for k in ids]).pvalue
    assert (b.test.over, b.test.n, b.test.p) == ("items", 10, pytest.approx(p_b))
    assert (c.test.n, c.test.p) == (10, pytest.approx(p_c))
    assert [b.test.p_holm, c.test.p_holm] == pytest.approx(stats.holm([p_b, p_c]))
    assert p_b * 2 < 0.05 and not b.tie  # 2 / 2**10 before correction
    assert c.tie and c.test.p_holm >= 0.05
    assert table.tests["m"] == ("Wilcoxon signed-rank against the best on per-item values, "
                                "Holm-corrected over 2 comparisons")
    assert "not significantly different from the best" in c.test.text() and "n=10" in c.test.text()


@pytest.mark.parametrize(("seeds", "tie"), [(5, True), (6, False)])
def test_several_seeds_compare_per_seed_values(seeds: int, tie: bool) -> None:
    # The best is ahead on every seed: exact p = 2 / 2**seeds, 0.0625 for five seeds (never below 0.05), 0.031 for six.
    specs = [("a", s, 0.9 + 0.01 * s) for s in range(seeds)] + [("b", s, 0.5 + 0.02 * s) for s in range(seeds)]
    (table,) = build_tables(_rows(specs))
    b = table.rows["b"]["m"]
    assert (b.test.over, b.test.n, b.test.p) == ("seeds", seeds, pytest.approx(2 / 2**seeds))
    assert b.tie is tie and "per-seed values" in table.tests["m"]


def test_report_hover_says_p_and_n_and_the_page_names_the_test(tmp_path, make_store) -> None:
    good = [0.9, 0.85, 0.95, 0.9, 0.88, 0.92, 0.91, 0.87]
    close = [v - d for v, d in zip(good, [0.01, -0.01, 0.02, -0.02, 0.01, -0.01, 0.0, 0.005], strict=True)]
    far = [v - 0.3 for v in good]
    cells = [(name, "d", 0, {"ssim": {"value": float(np.mean(v)), "std": 0.01, "n": 8}}, {"ssim": v})
             for name, v in (("good", good), ("close", close), ("far", far))]  # fmt: skip
    out = make_store(tmp_path / "r", "s", cells)
    index = unescape(build_report(out).read_text())
    ties = re.findall(r'<span class="tie-mark" title="([^"]*)">≈</span>', index)
    assert len(ties) == 1 and "n=8" in ties[0] and "p=" in ties[0] and "Holm-corrected p=" in ties[0]
    assert "Wilcoxon signed-rank against the best on per-item values, Holm-corrected over 2 comparisons" in index
    board = json.loads((out / "leaderboard.json").read_text())[0]
    assert board["rows"]["far"]["ssim"]["test"]["n"] == 8 and not board["rows"]["far"]["ssim"]["tie"]
    assert board["rows"]["close"]["ssim"]["tie"] and board["rows"]["good"]["ssim"]["test"] is None
