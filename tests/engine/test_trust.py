"""Numbers a reader can trust: baselines, collapse flags, and tables of the suite as it is now."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from toy_suites import toy_suite

from bench_core.evaluator import Spread
from bench_core.results import load_results
from bench_core.tables import build_tables


def _cells(out: Path) -> list[dict]:
    con = sqlite3.connect(out / "results.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM cells ORDER BY started")]
    finally:
        con.close()


def _table(out: Path, dataset: str, task: str):
    data = load_results(out)
    return next(t for t in build_tables(data.results, data.per_item) if (t.dataset, t.task) == (dataset, task))


def _toy_items(root: Path, split: str) -> np.ndarray:
    return np.stack([np.load(f) for f in sorted((root / split).glob("*.npy"))])[:, None]


def _unit(x):
    return np.clip((x + 1.0) / 2.0, 0, 1)  # toy data lies in [-1, 1]


def test_spread_equals_the_std_over_all_items():
    x = torch.randn(37, 2, 5, 6, dtype=torch.float64)
    spread = Spread()
    for chunk in x.split(8):
        spread.update(chunk)
    assert spread.compute() == pytest.approx(float(x.std(0, unbiased=False).pow(2).mean().sqrt()), rel=1e-12)


def test_baselines_equal_hand_computed_values(run_bench, write_suite, tmp_path):
    data = tmp_path / "toydata"
    assert run_bench("data", "make", "toy", str(data)).returncode == 0
    suite = toy_suite(
        metrics=["toy-mae"],
        datasets=[{"plugin": "toy", "root": str(data)}, {"plugin": "toy", "id": "paired", "root": str(data),
                                                          "options": {"paired": True}}],
    )  # fmt: skip
    result = run_bench("run", str(write_suite(suite)), "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    train, test = _toy_items(data, "train"), _toy_items(data, "test")
    mean_image = train.astype(np.float64).mean(0)
    expected_mean = np.abs(_unit(mean_image)[None] - _unit(test)).mean()
    # Paired toy items are (x, -x): identity's A2B error is |x - (-x)|; nearest-train looks up -x_nearest.
    expected_identity = np.abs(_unit(test) - _unit(-test)).mean()
    flat_train, flat_test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    nearest = ((flat_test[:, None] - flat_train[None]) ** 2).sum(-1).argmin(1)
    expected_nearest = np.abs(_unit(-train[nearest]) - _unit(-test)).mean()

    out = tmp_path / "reports" / "toy"
    recon = _table(out, "toy", "recon")
    assert recon.baselines["mean-image"]["toy-mae"].mean == pytest.approx(expected_mean, abs=1e-6)
    a2b = _table(out, "paired", "A2B")
    assert set(a2b.baselines) == {"mean-image", "identity", "nearest-train"}
    assert a2b.baselines["identity"]["toy-mae"].mean == pytest.approx(expected_identity, abs=1e-6)
    assert a2b.baselines["nearest-train"]["toy-mae"].mean == pytest.approx(expected_nearest, abs=1e-6)
    # Never ranked, and stored as rows of their own kind.
    assert not any(a.best for aggs in a2b.baselines.values() for a in aggs.values())
    kinds = {r["kind"] for r in load_results(out).results if r["model"].startswith("baseline:")}
    assert kinds == {"baseline"}


def test_constant_model_is_flagged_below_baseline_and_input_independent(run_bench, write_suite, tmp_path):
    suite = toy_suite(
        metrics=["toy-mae"],
        models=[{"plugin": "toy-ae", "budget": {"steps": 40}},
                {"plugin": "toy-ae", "id": "constant", "params": {"constant": True}, "budget": {"steps": 2}}],
    )  # fmt: skip
    result = run_bench("run", str(write_suite(suite)))
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "reports" / "toy"
    table = _table(out, "toy", "recon")
    flags = " | ".join(table.flags.get("constant", []))
    assert "below the mean-image baseline on toy-mae" in flags
    assert "output does not depend on the input (output/target spread 0" in flags
    assert table.rows["constant"]["toy-mae"].below_baseline
    assert "toy-ae" not in table.flags  # the trained model beats the mean image and varies with its input
    diag = [r for r in load_results(out).results if r["metric"] == "input_dependence"]
    assert {r["model"]: round(r["value"], 6) for r in diag}["constant"] == 0.0
    index = (out / "index.html").read_text()
    assert "output does not depend on the input" in index and "mean-image" in index
    cell_page = (out / "cells" / "constant__toy__seed0" / "index.html").read_text()
    assert "below the mean-image baseline" in cell_page
    board = json.loads((out / "leaderboard.json").read_text())
    recon = next(t for t in board if t["task"] == "recon")
    assert recon["baselines"]["mean-image"]["toy-mae"]["mean"] > 0
    assert recon["rows"]["constant"]["toy-mae"]["below_baseline"] is True
    # Markdown shows the same baseline rows and flags.
    md = run_bench("export", str(out), "--format", "markdown").stdout
    assert "mean-image (baseline)" in md and "output does not depend on the input" in md


def test_edited_suite_supersedes_old_rows_and_metric_edit_reuses_weights(run_bench, write_suite, tmp_path):
    path = write_suite(toy_suite(metrics=["toy-mae"]))
    assert run_bench("run", str(path), "--no-report").returncode == 0
    # A metric-only edit: new cells, evaluated from the stored checkpoint without training.
    write_suite(toy_suite(metrics=["toy-mae", "mean-gap"]))
    second = run_bench("run", str(path))
    assert second.returncode == 0, second.stdout + second.stderr
    out = tmp_path / "reports" / "toy"
    model_cells = [c for c in _cells(out) if c["kind"] == "model"]
    assert len(model_cells) == 2
    assert json.loads(model_cells[-1]["details"])["weights"].startswith("checkpoint store")
    data = load_results(out)
    assert data.superseded == 2  # the model cell and the mean-image baseline of the first version
    table = next(t for t in build_tables(data.results) if t.task == "recon")
    agg = table.rows["toy-ae"]["toy-mae"]
    assert agg.n_seeds == 1 and agg.seeds == [0]  # never two versions of one cell as two seeds
    assert "2 older results of earlier versions of this suite" in (out / "index.html").read_text()
    everything = load_results(out, everything=True)
    labels = {r["model"] for r in everything.results}
    assert any(label.startswith("toy-ae (superseded, run ") for label in labels)
    # Exports keep every row, and say which are the suite's current ones and their cells' status.
    assert run_bench("export", str(out), "--format", "csv").returncode == 0
    frame = pd.read_csv(out / "results.csv")
    old_keys = {c["cell_key"] for c in _cells(out)} - {r.cell_key for r in load_results(out).results}
    assert set(frame.loc[~frame["current"], "cell_key"]) == old_keys
    assert (frame["cell_status"] == "done").all()


def test_failed_cells_of_an_earlier_edit_are_not_listed(run_bench, write_suite, tmp_path):
    broken = {"plugin": "toy-ae", "id": "diverges", "params": {"nan_loss": True}}
    path = write_suite(toy_suite(metrics=["toy-mae"], models=[toy_suite()["models"][0], broken]))
    assert run_bench("run", str(path), "--no-report").returncode == 1
    write_suite(toy_suite(metrics=["toy-mae"]))
    assert run_bench("run", str(path)).returncode == 0
    out = tmp_path / "reports" / "toy"
    assert "diverges" not in {c["model"] for c in load_results(out).cells}
    assert "consecutive updates skipped" not in (out / "index.html").read_text()


def test_replaced_data_under_the_same_root_makes_new_cells(run_bench, write_suite, tmp_path):
    data = tmp_path / "toydata"
    assert run_bench("data", "make", "toy", str(data)).returncode == 0
    path = write_suite(toy_suite(metrics=["toy-mae"], datasets=[{"plugin": "toy", "root": str(data)}]))
    assert run_bench("run", str(path), "--no-report").returncode == 0
    extra = np.zeros((16, 16), np.float32)
    np.save(data / "train" / "item_999.npy", extra)  # the data changed: one more training item
    rerun = run_bench("run", str(path), "--no-report")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "finished in an earlier run" not in rerun.stdout
    out = tmp_path / "reports" / "toy"
    model_cells = [c for c in _cells(out) if c["kind"] == "model"]
    assert len(model_cells) == 2
    assert json.loads(model_cells[-1]["details"])["weights"].startswith("trained")
    assert load_results(out).superseded == 2
