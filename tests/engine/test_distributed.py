"""Data-parallel training on CPU with the gloo backend and 2 processes (torchrun)."""

import sqlite3
import sys

import pytest
from toy_suites import toy_suite


def metric_values(out_dir):
    con = sqlite3.connect(out_dir / "results.sqlite")
    try:
        return {(t, m): v for t, m, v in con.execute("SELECT task, metric, value FROM results")}
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
    assert con.execute("SELECT COUNT(*) FROM cells").fetchone() == (1,)  # one row per cell, from rank 0
    counts = con.execute("SELECT COUNT(*), COUNT(DISTINCT task || metric) FROM results").fetchone()
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
    assert con.execute("SELECT status FROM cells").fetchall() == [("running",)]  # retried on the next run
