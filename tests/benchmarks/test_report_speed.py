"""Speed of ``bench report`` on a large store: 200 cells x 10 metrics with per-item values and baselines.

20 models x 2 datasets x 5 seeds, each cell with 10 per-item metrics over 50 test items (so
every value gets its bootstrap interval), a throughput row, a loss curve, an eval.json and
the comparison strip's kept items; plus a mean-image baseline per dataset, so the baseline
rows and flags, the paired tests of every column (per-seed values, Holm-corrected) and a
strip page per dataset are part of what is timed. The budget is 5 s on the 2-core CPU
(issue #18); pages are re-rendered from the store on every call. Run with
``pytest tests/benchmarks --benchmark-enable``; under the default ``--benchmark-disable``
it renders once and checks the pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_core.images import StripKeeper
from bench_core.report.html import build_report
from bench_core.store import CellIdentity, ResultsStore
from bench_core.timing import Timing, benchmark_throughput

MODELS, DATASETS, SEEDS, METRICS, ITEMS = 20, 2, 5, 10, 50


def _rows(rng: np.random.Generator, evaluation: dict, kind: str = "metric") -> list[dict]:
    rows = []
    for j in range(METRICS):
        values = rng.random(ITEMS).tolist()
        evaluation["recon"][f"metric{j}"] = {
            "mean": float(np.mean(values)), "std": 0.1, "n": ITEMS,
            "per_file": {f"item{i:03d}": v for i, v in enumerate(values)},
        }  # fmt: skip
        rows.append({"task": "recon", "metric": f"metric{j}", "value": float(np.mean(values)), "std": 0.1,
                     "n": ITEMS, "higher_is_better": True, "kind": kind, "settings": {"data_range": 1.0},
                     "counters": {"pred_clamped": 2, "pred_values": 100}, "provenance": {"plugin": f"metric{j}"},
                     "ci_low": float(np.mean(values)) - 0.05, "ci_high": float(np.mean(values)) + 0.05})  # fmt: skip
    return rows


def _cell(out: Path, store: ResultsStore, key: str, label: str, dataset: str, seed: int, kind: str, rng) -> None:
    slug = f"{label.replace(':', '__')}__{dataset}__seed{seed}"
    store.claim_cell(CellIdentity(key, "big", label, dataset, seed, kind), "r1")
    evaluation: dict = {"recon": {}}
    rows = _rows(rng, evaluation, "baseline" if kind == "baseline" else "metric")
    if kind == "model":
        rows.append({"task": "recon", "metric": "images_per_s", "value": 100.0 + seed, "std": None, "n": ITEMS,
                     "higher_is_better": True, "kind": "throughput", "settings": {"batch_size": 4, "device": "cpu"},
                     "provenance": {"plugin": "engine"}})  # fmt: skip
    folder = out / "cells" / slug
    folder.mkdir(parents=True, exist_ok=True)
    keeper = StripKeeper()  # the strip items a real evaluation keeps (8x8 tiles: the page, not the PNGs, is timed)
    for i in range(ITEMS):
        keeper.offer(f"item{i:03d}", lambda: {"target": torch.zeros(1, 8, 8), "output": torch.full((1, 8, 8), 0.5)})
    keeper.save(folder / "strip" / "recon")
    (folder / "eval.json").write_text(json.dumps(evaluation))
    curve = [{"step": i, "loss": 1.0 / i} for i in range(1, 200)]
    details = {"cell_dir": f"cells/{slug}", "grids": {}, "spec": {"modalities": ["image"], "dims": 2},
               "stages": [{"stage": "s", "steps": 199, "curve": curve}] if kind == "model" else []}  # fmt: skip
    store.finish_cell(key, "done", None, details, rows)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report200")
    (out / "suite.yaml").write_text("name: big\ndescription: 200 cells x 10 metrics\n")
    store = ResultsStore(out)
    store.start_run("r1", "big", "h", [], {"git": {"commit": "x", "dirty": False}, "packages": {}, "device": "cpu"})
    rng = np.random.default_rng(0)
    keys = []
    for d in range(DATASETS):
        keys.append(f"baseline-{d}")
        _cell(out, store, keys[-1], "baseline:mean-image", f"data{d}", 0, "baseline", rng)
        for m in range(MODELS):
            for seed in range(SEEDS):
                keys.append(f"k{m}-{d}-{seed}")
                _cell(out, store, keys[-1], f"model{m}", f"data{d}", seed, "model", rng)
    store.record_plan("big", "r1", keys)
    store.finish_run("r1")
    store.close()
    return out


@pytest.mark.benchmark(group="report")
def test_report_of_200_cells_x_10_metrics(benchmark, big_store: Path) -> None:
    """``build_report`` (index, 200 cell pages, leaderboard.json) from the store alone."""
    benchmark_throughput(
        benchmark, lambda: build_report(big_store), items=MODELS * DATASETS * SEEDS, timing=Timing("cpu", rounds=3),
        unit="cells", metrics=METRICS, items_per_metric=ITEMS, target="under 5 s on the 2-core CPU",
    )  # fmt: skip
    board = json.loads((big_store / "leaderboard.json").read_text())
    assert len(board) == DATASETS and all(len(t["rows"]) == MODELS for t in board)
    assert all(set(t["baselines"]) == {"mean-image"} for t in board)
    assert len(list((big_store / "cells").glob("*/index.html"))) == MODELS * DATASETS * SEEDS + DATASETS
    strips = sorted((big_store / "strips").glob("*.html"))
    assert len(strips) == DATASETS and all(s.read_text().count("<tr class=\"model\">") == MODELS for s in strips)
    assert all(t["paired_tests"]["metric0"].endswith(f"over {MODELS - 1} comparisons") for t in board)
