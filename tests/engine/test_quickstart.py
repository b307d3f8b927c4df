"""The shipped quickstart suite, end to end through the CLI with the built-in plugins.

Budgets and data sizes are cut down so this runs in CI; everything else (plugins, configs,
metrics, dataset options) is the file users run.
"""

import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).parents[2] / "suites" / "quickstart.yaml"


def test_quickstart_suite_runs_every_cell(tmp_path, bench_env):
    suite = yaml.safe_load(QUICKSTART.read_text())
    for model in suite["models"]:
        model["budget"] = {"steps": 3, "stages": {}}
    for dataset in suite["datasets"]:
        dataset["embedded"] = {**dataset.get("embedded", {}), "n": 12}
    suite["evaluation"] = {**suite.get("evaluation", {}), "n_samples": 4, "max_items": 4}
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = subprocess.run(
        [sys.executable, "-m", "bench_core", "run", str(path)],
        cwd=tmp_path, env=bench_env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "reports" / "quickstart"
    con = sqlite3.connect(out / "results.sqlite")
    cells = con.execute("SELECT model, dataset, status, reason FROM cells WHERE kind = 'model'").fetchall()
    expected = {(m.get("id") or f"{m['plugin']}-{m['config']}") for m in suite["models"]}
    done = {model for model, _, status, _ in cells if status == "done"}
    assert expected <= done, cells
    metrics = {m for (m,) in con.execute("SELECT DISTINCT metric FROM results WHERE kind != 'baseline'")}
    assert {"psnr", "ssim"} <= metrics
    assert (out / "index.html").exists()
