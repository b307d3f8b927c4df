"""How metrics are read: declared description and headline, their defaults, and who uses them."""

from __future__ import annotations

import sqlite3

import pytest

from bench_core.describe import describe, find, format_description
from bench_core.metric_reading import MetricReading, metric_reading, row_reading
from bench_core.plugins import load_registry
from bench_core.rows import ResultRow
from bench_core.runner import _cell_line

BUILT_IN = ["psnr", "ssim", "ms-ssim", "fid", "kid", "prdc", "swd", "copies", "authenticity", "data-copying"]


class Declared:
    """Docstring first line.

    More text.
    """

    higher_is_better = True
    description = "  How it  reads "
    headline = False


class Undeclared:
    """First line of the docstring,
    which goes on here.

    Second paragraph.
    """

    higher_is_better = False


class NoDirection:
    higher_is_better = None


def test_declared_attributes_win_and_defaults_follow_the_direction() -> None:
    assert metric_reading(Declared) == MetricReading("How it reads", False)
    assert metric_reading(Undeclared) == MetricReading("First line of the docstring,", True)
    assert metric_reading(NoDirection) == MetricReading("", False)
    # A non-bool headline or a blank description is not a declaration: the defaults apply.
    odd = type("Odd", (Undeclared,), {"headline": "yes", "description": "  "})
    assert metric_reading(odd) == MetricReading("First line of the docstring,", True)


def test_rows_stored_before_readings_get_the_same_defaults() -> None:
    assert row_reading({"plugin": "x"}, True) == MetricReading("", True)
    assert row_reading({"plugin": "x"}, None) == MetricReading("", False)
    assert row_reading({"description": "d", "headline": False}, True) == MetricReading("d", False)


def test_every_built_in_metric_declares_both_on_its_own_class() -> None:
    registry = load_registry(only=BUILT_IN)
    for name in BUILT_IN:
        cls = registry.get("metric", name).cls
        assert isinstance(cls.__dict__.get("description"), str) and cls.__dict__["description"], name
        assert isinstance(cls.__dict__.get("headline"), bool), name
        if cls.higher_is_better is None:
            assert cls.headline is False, name  # a metric that is never ranked never leads
    assert [n for n in BUILT_IN if registry.get("metric", n).cls.headline] == ["psnr", "ssim", "fid"]


def test_plugins_details_says_how_a_metric_reads() -> None:
    registry = load_registry(only=["ssim", "data-copying"])
    ssim = describe(find(registry, "ssim")[0])
    declared = registry.get("metric", "ssim").cls.description
    assert ssim["headline"] is True and ssim["description"] == declared
    text = format_description(ssim)
    assert f"reads as: {ssim['description']}" in text and "headline: yes" in text
    assert "headline: no" in format_description(describe(find(registry, "data-copying")[0]))


def _row(task: str, metric: str, value: float, headline: bool | None, kind: str = "metric") -> ResultRow:
    provenance = {"plugin": metric} if headline is None else {"plugin": metric, "headline": headline}
    return ResultRow(task=task, metric=metric, value=value, higher_is_better=True, kind=kind, provenance=provenance)


class _Cell:
    id = "m/d/seed0"


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_console_line_of_a_cell_that_did_not_finish_gives_its_reason(status: str) -> None:
    mark = "✗" if status == "failed" else "-"
    assert _cell_line(_Cell(), status, "out of memory", []) == f"{mark} m/d/seed0: {status}: out of memory"


def test_console_line_shows_the_first_two_headline_metrics_whatever_their_names() -> None:
    rows = [
        _row("train", "ae.peak_memory_mb", 10.0, None, kind="memory"),
        _row("recon", "third-party", 0.5, None),  # stored without a reading: ranked, so headline
        _row("recon", "quiet", 3.0, False),
        _row("recon", "second", 0.25, True),
        _row("recon", "third", 7.0, True),
        _row("sample", "third-party", 0.75, None),
    ]
    line = _cell_line(_Cell(), "done", None, rows)
    assert line == "✓ m/d/seed0: done recon.third-party=0.5 recon.second=0.25 sample.third-party=0.75"



def test_report_headers_say_what_a_metric_measures(tmp_path, make_store) -> None:
    from bench_core.report.html import build_report
    from bench_core.store import STORE_NAME

    out = make_store(tmp_path / "r", "s", [("a", "d", 0, {"ssim": {"value": 0.8}, "mae": {"value": 0.1}}, None)])
    with sqlite3.connect(out / STORE_NAME) as db:  # as evaluation stores it: the plugin's reading in the provenance
        db.execute("UPDATE results SET provenance = ? WHERE metric = 'ssim'",
                   ('{"plugin": "ssim", "description": "Structure <i>seen</i>", "headline": true}',))  # fmt: skip
    index = build_report(out).read_text()
    assert 'title="Structure &lt;i&gt;seen&lt;/i&gt;; higher is better">ssim' in index
    assert 'title="higher is better">mae' in index  # stored without one: no description, only the direction
