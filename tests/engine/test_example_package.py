"""The third-party example under examples/bench-plugin-example, installed as a user would install it.

pip installs a copy of the example (pip builds in the source folder, which must stay clean)
into a private target folder; `bench` subprocesses with that folder on PYTHONPATH find
its plugins through the dist-info's entry points, exactly as for a site-packages install.
Offline: --no-deps and --no-build-isolation build with the setuptools already installed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bench-plugin-example"
DIST = "bench-plugin-example"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The example's source copy and the folder it is installed into."""
    base = tmp_path_factory.mktemp("example")
    source = base / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".*"))
    target = base / "site"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--quiet", "--target", str(target), str(source),
        ],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "bench_plugin_example").is_dir()
    return {"source": source, "target": target}


def env_with(target: Path, **extra: str) -> dict[str, str]:
    """The current environment with the install folder on PYTHONPATH and autoload on."""
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_DISABLE_PLUGIN_AUTOLOAD", "BENCH_TRACE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread is faster and fairer on a shared machine
    env.update(extra)
    return env


def test_bench_lists_and_runs_the_installed_example(installed, tmp_path):
    env = env_with(installed["target"], BENCH_CACHE_DIR=str(tmp_path / "cache"))
    listing = subprocess.run(
        [sys.executable, "-m", "bench_core", "plugins"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    plugins = (("tinyae", "model tinyae"), ("tinypix", "model tinypix"), ("shapes2d", "dataset shapes2d"),
               ("mae", "metric mae"))  # fmt: skip
    for entry, provides in plugins:
        block = listing.stdout.split(f"{DIST} 0.1.0  {entry} = bench_plugin_example.{entry}\n", 1)[1]
        assert block.startswith(f"    provides: {provides}\n    status:   ok"), listing.stdout

    # The example suite itself, with budgets and data small enough for a test.
    suite = yaml.safe_load((installed["source"] / "suites" / "example.yaml").read_text())
    suite["device"] = "cpu"
    for model in suite["models"]:
        model["budget"] = {"steps": 12, "batch_size": 4}
    by_plugin = {d["plugin"]: d for d in suite["datasets"]}
    for name in ("hipmri", "shapes2d", "gold"):
        by_plugin[name]["embedded"] = {"n": 12, "seed": 0}
    suite["evaluation"] = {"batch_size": 4, "grid_size": 2}
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))

    run = subprocess.run(
        [sys.executable, "-m", "bench_core", "run", str(path), "--no-progress", "--output", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

    con = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    con.row_factory = sqlite3.Row
    try:
        cells = {(r["model"], r["dataset"]): r["status"] for r in con.execute("SELECT * FROM cells WHERE kind='model'")}
        baselines = {(r["model"], r["dataset"]) for r in con.execute("SELECT * FROM cells WHERE kind='baseline'")}
        rows = {
            (r["model"], r["dataset"], r["task"], r["metric"]): dict(r) for r in con.execute("SELECT * FROM results")
        }
    finally:
        con.close()
    assert cells == {("tinyae-tiny", "hipmri-phantom"): "done", ("tinyae-tiny", "shapes2d"): "done",
                     ("tinypix-tiny", "gold"): "done"}  # fmt: skip
    # A third-party dataset gets the engine's baselines like a built-in one; on gold, for A2B only.
    assert {b for b in baselines if b[1] != "gold"} == {("baseline:mean-image", "hipmri-phantom"),
                                                        ("baseline:mean-image", "shapes2d")}  # fmt: skip
    assert {b for b in baselines if b[1] == "gold"} >= {("baseline:mean-image", "gold"), ("baseline:identity", "gold")}
    # The one-way translator is evaluated on its one task: A2B rows, no B2A, no failure.
    gold_tasks = {task for (model, _, task, metric) in rows if model == "tinypix-tiny" and metric == "mae"}
    assert gold_tasks == {"A2B"}
    baseline_tasks = {task for (model, dataset, task, _) in rows if dataset == "gold" and model.startswith("baseline:")}
    assert baseline_tasks == {"A2B"}
    for dataset in ("hipmri-phantom", "shapes2d"):
        mae = rows[("tinyae-tiny", dataset, "recon", "mae")]
        psnr = rows[("tinyae-tiny", dataset, "recon", "psnr")]
        assert 0.0 < mae["value"] < 1.0 and mae["higher_is_better"] == 0 and mae["n"] == psnr["n"] > 0
        assert json.loads(mae["settings"])["data_range"] == 1.0
        assert json.loads(mae["provenance"])["model_dist"] == DIST
        assert psnr["value"] > 0.0
        assert ("tinyae-tiny", dataset, "recon", "ssim") in rows
        assert ("tinyae-tiny", dataset, "model", "kl_nats") in rows  # the model's evaluation_metrics()
        assert ("tinyae-tiny", dataset, "sample", "mae") not in rows  # paired metrics skip samples
    html = (tmp_path / "out" / "index.html").read_text()
    assert "tinyae-tiny" in html and "shapes2d" in html and "mae" in html and "psnr" in html


def test_example_package_passes_its_own_tests(installed, tmp_path):
    # Its tests run against the installed copy: run from tmp_path, nothing puts the source on sys.path.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(installed["source"] / "tests")],
        cwd=tmp_path, env=env_with(installed["target"]), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failed" not in done.stdout
