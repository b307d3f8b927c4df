"""Data-parallel training on CPU with the gloo backend and 2 processes (torchrun)."""

import sqlite3
import sys

import pytest
from toy_suites import toy_suite


def metric_values(out_dir):
    con = sqlite3.connect(out_dir / "results.sqlite")
    try:
        return {
            (t, m): v for t, m, v in con.execute("SELECT task, metric, value FROM results WHERE kind != 'baseline'")
        }
    finally:
        con.close()


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_two_process_run_matches_one_process(run_bench, write_suite, tmp_path):
    # Batch 8 per rank on 2 ranks sees the same 16 images per step as batch 16 on 1 rank.
    single = toy_suite(name="one", models=[{"plugin": "toy-ae", "budget": {"steps": 20, "batch_size": 16}}])
    double = toy_suite(name="two", models=[{"plugin": "toy-ae", "budget": {"steps": 20, "batch_size": 8}}])
    one = run_bench("run", str(write_suite(single, "one.yaml")), "--no-report")
    assert one.returncode == 0, one.stderr
    two = run_bench("run", str(write_suite(double, "two.yaml")), "--nproc", "2", "--no-report", timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = metric_values(tmp_path / "reports" / "one"), metric_values(tmp_path / "reports" / "two")
    con = sqlite3.connect(tmp_path / "reports" / "two" / "results.sqlite")
    assert con.execute("SELECT COUNT(*) FROM cells WHERE kind = 'model'").fetchone() == (
        1,
    )  # one row per cell, from rank 0
    counts = con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT task || metric) FROM results WHERE kind != 'baseline'"
    ).fetchone()
    assert counts[0] == counts[1]
    world = con.execute("SELECT provenance FROM runs").fetchone()[0]
    assert '"world_size": 2' in world
    # Different sample order (rank shards of one permutation), same data and steps: close, not equal.
    assert b[("recon", "toy-mae")] == pytest.approx(a[("recon", "toy-mae")], rel=0.25)


def test_one_rank_crashing_stops_every_process(run_bench, write_suite, tmp_path):
    import subprocess

    crash = toy_suite(name="crash", models=[{"plugin": "toy-ae", "params": {"crash_rank": 1}}])
    path = write_suite(crash, "crash.yaml")
    result = run_bench("run", str(path), "--nproc", "2", "--no-report", timeout=300)
    assert result.returncode != 0
    assert "rank 1 crashed on purpose" in result.stderr
    left = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left behind: {left}"
    con = sqlite3.connect(tmp_path / "reports" / "crash" / "results.sqlite")
    assert con.execute("SELECT status FROM cells WHERE kind = 'model'").fetchall() == [
        ("running",)
    ]  # retried on the next run


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_sharded_evaluation_equals_one_process(run_bench, write_suite, tmp_path):
    import json

    # 9 items on 2 ranks: shards of 5 and 4, batch 4: rank 0 runs 2 batches, rank 1 one (then pads).
    evaluation = {"batch_size": 4, "max_items": 9, "grid_size": 2, "n_samples": 4}
    one = toy_suite(name="one", models=[{"plugin": "toy-ae", "budget": {"steps": 5}}], evaluation=evaluation)
    assert run_bench("run", str(write_suite(one, "one.yaml")), "--no-report").returncode == 0
    (weights,) = (tmp_path / "reports" / "one" / "checkpoints").glob("*/model.safetensors")
    # The same weights evaluated by 2 processes.
    two = toy_suite(name="two", models=[{"plugin": "toy-ae", "load": str(weights)}], evaluation=evaluation)
    done = run_bench("run", str(write_suite(two, "two.yaml")), "--nproc", "2", "--no-report", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = metric_values(tmp_path / "reports" / "one"), metric_values(tmp_path / "reports" / "two")
    compared = [k for k in a if k[0] == "recon" and k[1] != "images_per_s"]
    assert compared
    for key in compared:  # every item seen once, whichever rank ran it
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    per_file = json.loads((tmp_path / "reports" / "two" / "cells" / "toy-ae__toy__seed0" / "eval.json").read_text())
    assert len(per_file["recon"]["toy-mae"]["per_file"]) == 9
