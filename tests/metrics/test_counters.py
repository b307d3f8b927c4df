"""Metric counters (clamped values, clipped eigenvalues): in MetricValue.counters, stored apart from settings."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from bench_core.feeder import MetricFeeder, build_metric
from bench_core.rows import ResultRow
from bench_core.store import CellIdentity, ResultsStore
from bench_core.tables import build_tables
from bench_plugins.metrics.fid import FID
from bench_plugins.metrics.psnr import PSNR
from bench_plugins.metrics.swd import SWD


def _with_outliers(seed: int, high: int, low: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A target in [0, 1] and a prediction with ``high`` values set to 1.5 and ``low`` set to -0.5."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(3, 1, 16, 16, generator=g)
    pred = (target + 0.05 * torch.randn(3, 1, 16, 16, generator=g)).clamp(0, 1)
    flat = pred.view(-1)
    flat[:high] = 1.5
    flat[high : high + low] = -0.5
    return pred, target


def _rows(metric: type, options: dict, pred: torch.Tensor, target: torch.Tensor) -> list[ResultRow]:
    feeder = MetricFeeder({metric.name: (metric, build_metric(metric, options, pred.dim() - 2))})
    feeder.update(pred, target, [f"item{i}" for i in range(len(pred))])
    rows, _ = feeder.rows("recon", {"pred_clamped": 0, "pred_values": pred.numel()})
    return rows


def test_a_paired_metrics_clamp_count_is_a_counter_of_its_row():
    pred, target = _with_outliers(0, high=2, low=1)
    (row,) = _rows(PSNR, {"out_of_range": "clamp"}, pred, target)
    assert row.counters == {"clamped_values": 3, "pred_clamped": 0, "pred_values": 768}
    assert "clamped_values" not in row.settings and row.settings["out_of_range"] == "clamp"


def test_distribution_metrics_report_counters_on_every_row():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(6, 1, 8, 8, 8, generator=g), torch.rand(5, 1, 8, 8, 8, generator=g)
    fake[0, 0, 0, 0, 0] = 1.25  # one value clamped, in a corner no centre slice cuts
    rows = _rows(FID, {"features": "pyramid", "out_of_range": "clamp"}, fake, real)
    assert [r.metric for r in rows] == ["fid", "fid.axial", "fid.coronal", "fid.sagittal"]
    for row in rows:
        assert row.counters["clamped_values"] == 1 and isinstance(row.counters["negative_eigenvalues_clipped"], int)
        assert not {"clamped_values", "negative_eigenvalues_clipped"} & set(row.settings)
    planes = sum(r.counters["negative_eigenvalues_clipped"] for r in rows[1:])
    assert rows[0].counters["negative_eigenvalues_clipped"] == planes  # the headline sums the planes
    (swd,) = _rows(SWD, {"out_of_range": "clamp", "patch_size": 3, "min_resolution": 8}, fake[:, :, 0], real[:, :, 0])
    assert swd.counters["clamped_values"] == 1 and "clamped_values" not in swd.settings


def test_values_differing_only_in_counters_rank_together(tmp_path):
    store = ResultsStore(tmp_path)
    for model, seed, outliers in (("a", 0, 1), ("a", 1, 4), ("b", 0, 0), ("b", 1, 2)):
        pred, target = _with_outliers(seed, high=outliers, low=0)
        key = f"{model}-{seed}"
        store.claim_cell(CellIdentity(key, "suite", model, "data", seed), "run")
        store.finish_cell(key, "done", None, {}, _rows(PSNR, {"out_of_range": "clamp"}, pred, target))
    stored = store.results("suite")
    store.close()
    assert sorted(r.counters["clamped_values"] for r in stored) == [0, 1, 2, 4]
    assert all("clamped_values" not in r.settings for r in stored)
    (table,) = build_tables(stored)
    assert table.incomparable == []
    a, b = table.rows["a"]["psnr"], table.rows["b"]["psnr"]
    assert a.settings_key == b.settings_key != "mixed" and a.seeds == b.seeds == [0, 1]
    assert (a.best, b.best) == ((a.mean > b.mean), (b.mean > a.mean))


def test_an_older_stores_counters_in_settings_are_read_as_counters(tmp_path):
    path = tmp_path / "results.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE results (
            run_id TEXT NOT NULL, cell_key TEXT NOT NULL, suite TEXT NOT NULL,
            model TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
            task TEXT NOT NULL, metric TEXT NOT NULL,
            value REAL, std REAL, n INTEGER, higher_is_better INTEGER,
            settings TEXT NOT NULL, provenance TEXT NOT NULL, created REAL NOT NULL,
            ci_low REAL, ci_high REAL, kind TEXT NOT NULL DEFAULT 'metric',
            UNIQUE (cell_key, task, metric)
        );
        INSERT INTO results VALUES ('r', 'k', 's', 'm', 'd', 0, 'recon', 'psnr', 30.0, 1.0, 4, 1,
            '{"data_range": 1.0, "clamped_values": 2, "pred_clamped": 5}', '{}', 0, NULL, NULL, 'metric');
        """
    )
    old.commit()
    old.close()
    store = ResultsStore(path)
    (row,) = store.results()
    store.close()
    assert row.settings == {"data_range": 1.0}
    assert row.counters == {"clamped_values": 2, "pred_clamped": 5}


@pytest.mark.parametrize("metric", [PSNR, FID])
def test_settings_never_hold_counters_before_or_after_updates(metric):
    options = {"features": "pyramid"} if metric is FID else {}
    instance = build_metric(metric, {**options, "out_of_range": "clamp"}, 2)
    pred, target = _with_outliers(2, high=3, low=0)
    instance.update(pred, target)
    result = instance.compute()
    assert result.counters["clamped_values"] == 3
    assert not {"clamped_values", "negative_eigenvalues_clipped"} & set(instance.settings())
