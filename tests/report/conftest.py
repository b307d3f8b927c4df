"""Fixtures of the report tests: small stores written through the store API, and one real CLI run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from bench_core.store import CellIdentity, ResultsStore

ENGINE_TESTS = Path(__file__).parents[1] / "engine"
PROVENANCE = {
    "git": {"commit": "abc123", "dirty": True},
    "packages": {"torch": "2.14.1", "medgen-bench": "0.1.0"},
    "device": "cuda:0",
    "gpu": "Test GPU 80GB",
    "python": "3.11.7",
}


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def write_cell(
    out: Path,
    store: ResultsStore,
    run_id: str,
    suite: str,
    model: str,
    dataset: str,
    seed: int,
    metrics: dict[str, dict[str, Any]],
    per_file: dict[str, list[float]] | None = None,
) -> None:
    """One finished cell of task ``recon``: a row per metric, eval.json, images and a grid.

    ``metrics``: name -> {"value", "std", "n", "higher", "settings"}; ``per_file``: name -> per-item values.
    """
    key = f"{suite}-{model}-{dataset}-{seed}"
    slug = f"{model}__{dataset}__seed{seed}".replace("<", "_").replace(">", "_").replace("/", "_")
    cell_dir = out / "cells" / slug
    store.claim_cell(CellIdentity(key, suite, model, dataset, seed), run_id)
    evaluation: dict[str, Any] = {"recon": {}}
    for name, values in (per_file or {}).items():
        ids = {f"item_{i:03d}": v for i, v in enumerate(values)}
        evaluation["recon"][name] = {"mean": float(np.mean(values)), "std": None, "n": len(values), "per_file": ids}
        for i in range(len(values)):
            _png(cell_dir / "gt" / f"item_{i:03d}.png", 40 * i % 255)
            _png(cell_dir / "recon" / f"item_{i:03d}.png", 30 * i % 255)
    _png(cell_dir / "recon_grid.png", 128)
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "eval.json").write_text(json.dumps(evaluation))
    rows = [
        {"task": "recon", "metric": name, "value": m["value"], "std": m.get("std"), "n": m.get("n"),
         "higher_is_better": m.get("higher", True), "settings": m.get("settings", {"data_range": 1.0}),
         "provenance": {"plugin": name}}
        for name, m in metrics.items()
    ]  # fmt: skip
    rows.append(
        {"task": "recon", "metric": "images_per_s", "value": 100.0 + seed, "std": None, "n": 8,
         "higher_is_better": True, "settings": {"batch_size": 4, "device": "cuda:0", "precision": "fp32",
                                                "protocol": "wall clock of model calls, CUDA-synchronised"},
         "provenance": {"plugin": "engine"}}
    )  # fmt: skip
    details = {
        "weights": "trained",
        "cell_dir": f"cells/{slug}",
        "grids": {"recon": "recon_grid.png"},
        "spec": {"modalities": ["image"], "dims": 2, "shape": [8, 8], "value_range": [0, 1]},
        "stages": [{"stage": "ae", "steps": 3, "skipped": 0, "seconds": 0.5, "images_per_second": 10.0,
                    "curve": [{"step": 1, "loss": 1.0, "mse": 0.5}, {"step": 2, "loss": 0.5, "mse": 0.2},
                              {"step": 3, "loss": 0.25, "mse": 0.1}]}],
        "notes": [],
        "seconds": 1.5,
    }  # fmt: skip
    store.finish_cell(key, "done", None, details, rows)


@pytest.fixture
def make_store() -> Callable[..., Path]:
    """Write a store: ``make_store(out, suite, cells)`` with cells as (model, dataset, seed, metrics, per_file)."""

    def make(out: Path, suite: str, cells: list[tuple], failed: tuple[str, str] | None = None) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "suite.yaml").write_text(f"name: {suite}\ndescription: report test\n")
        store = ResultsStore(out)
        run_id = f"run-{suite}"
        store.start_run(run_id, suite, f"hash-{suite}", ["run", "suite.yaml"], PROVENANCE)
        for model, dataset, seed, metrics, per_file in cells:
            write_cell(out, store, run_id, suite, model, dataset, seed, metrics, per_file)
        if failed:
            cell = CellIdentity(f"{suite}-{failed[0]}", suite, failed[0], "d", 0)
            store.record_cell(cell, run_id, "failed", failed[1])
        store.finish_run(run_id)
        store.close()
        return out

    return make


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory) -> Path:
    """A real stored run made through ``bench run`` with the engine's fake plugins (2 seeds, 2 models).

    One model label holds ``<script>``, so every page also proves its escaping.
    """
    root = tmp_path_factory.mktemp("cli_run")
    suite = {
        "name": "toy",
        "description": "browser test suite",
        "seeds": [0, 1],
        "device": "cpu",
        "models": [
            {"plugin": "toy-ae", "budget": {"steps": 8}},
            {"plugin": "toy-ae", "id": "<script>alert(1)</script>", "params": {"width": 4}, "budget": {"steps": 8}},
            {"plugin": "toy-ae", "id": "diverges", "params": {"nan_loss": True}},
            {"plugin": "toy-3d"},
        ],
        "datasets": [{"plugin": "toy", "root": "embedded"}],
        "metrics": ["toy-mae", "mean-gap"],
        "evaluation": {"batch_size": 4, "grid_size": 4},
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["BENCH_CACHE_DIR"] = str(root / "cache")
    env.pop("BENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    result = subprocess.run(
        [sys.executable, "-m", "bench_core", "-p", "fakeplugins", "run", "suite.yaml", "--no-progress"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # the diverging model fails, the rest runs
    return root / "reports" / "toy"
