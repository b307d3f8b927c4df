"""`bench run --executor local`: cells as parallel local processes (submitit's local executor)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from cluster_helpers import query, slow_model, wait_for

pytestmark = pytest.mark.slow


def _overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold one moment."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_local_executor_runs_the_suite_max_parallel_at_a_time(tmp_path, bench, bench_env, suite_file):
    path = suite_file(seeds=[0, 1, 2], executor={"kind": "local", "max_parallel": 2, "poll_s": 0.5})
    done = bench("run", str(path), "--output", "out", env=bench_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted toy-ae/toy/seed0 (with 1 baselines): job" in done.stdout
    store = tmp_path / "out" / "results.sqlite"
    assert query(store, "SELECT status, COUNT(*) FROM cells GROUP BY status") == [("done", 4)]
    per_cell = query(store, "SELECT cell_key, COUNT(*) FROM results GROUP BY cell_key")
    assert len(per_cell) == 4 and query(store, "SELECT COUNT(*) FROM merged") == [(3,)]
    # Each job recorded its run: two ran at a time, never three; each with one thread (2 cores / 2 cells).
    runs = query(store, "SELECT started, finished, provenance FROM runs")
    assert len(runs) == 3 and _overlap([(a, b) for a, b, _ in runs]) == 2
    assert {json.loads(p)["torch_threads"] for *_, p in runs} == {1}
    assert (tmp_path / "out" / "index.html").exists()
    again = bench("run", str(path), "--output", "out", env=bench_env)
    assert again.returncode == 0 and "nothing to submit: 4 cells finished" in again.stdout


def test_a_failing_cell_is_retried_max_retries_times_with_its_reason(tmp_path, bench, bench_env, suite_file):
    model = {"plugin": "toy-ae", "params": {"nan_loss": True}}
    path = suite_file(models=[model], executor={"kind": "local", "poll_s": 0.5})
    done = bench("run", str(path), "--output", "out", "--no-report", env=bench_env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "retrying 1 failed cells (max_retries 1)" in done.stdout
    lines = done.stdout.splitlines()
    assert sum(line.startswith("✗ toy-ae/toy/seed0: failed: ") for line in lines) == 2
    assert any(line.startswith("  | ✗ toy-ae/toy/seed0: failed") for line in lines)  # the tail of the job's log
    store = tmp_path / "out" / "results.sqlite"
    ((reason,),) = query(store, "SELECT reason FROM cells WHERE model='toy-ae'")
    assert "consecutive updates skipped" in reason
    assert query(store, "SELECT attempts, state FROM jobs") == [(2, "ended")]
    status = bench("status", "out", env=bench_env)
    assert status.returncode == 1 and "failed" in status.stdout and "log: " in status.stdout


def test_ctrl_c_leaves_cells_running_and_cancel_stops_them(tmp_path, bench_env, bench, suite_file):
    path = suite_file(models=[slow_model(steps=100, sleep=0.2)], executor={"kind": "local", "poll_s": 0.3})
    # Started in a session of its own, so that SIGINT to its process group is what Ctrl-C in a terminal sends.
    command = [sys.executable, "-m", "bench_core", "-p", "fakeplugins", "run", str(path), "--output", "out"]
    waiting = subprocess.Popen(command, cwd=tmp_path, env=bench_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # fmt: skip
    out = tmp_path / "out"
    wait_for(lambda: list(out.glob("checkpoints/*/*train_state.pt")), 60, "the first training checkpoint")
    os.killpg(waiting.pid, signal.SIGINT)
    # communicate() returns once the pipe closes: only if the jobs did not inherit it either.
    stdout, _ = waiting.communicate(timeout=15)
    assert waiting.returncode == 130 and "stopped waiting; the jobs go on" in stdout
    ((job_id,),) = query(out / "results.sqlite", "SELECT job_id FROM jobs")
    assert not _ended(job_id)  # the cell's process survived Ctrl-C
    status = bench("status", "out", env=bench_env)
    assert "toy-ae/toy/seed0         running   job " in status.stdout, status.stdout
    assert re.search(r"; stage \w+ step \d+/100", status.stdout), status.stdout  # the job's progress file
    cancel = bench("cancel", "out", env=bench_env)
    assert f"cancelled 1 jobs: {job_id} (toy-ae/toy/seed0)" in cancel.stdout
    wait_for(lambda: _ended(job_id), 30, "the cancelled job to stop")
    status = bench("status", "out", env=bench_env)
    assert "toy-ae/toy/seed0         failed    cancelled (job" in status.stdout, status.stdout
    assert query(out / "results.sqlite", "SELECT COUNT(*) FROM cells WHERE model='toy-ae'") == [(0,)]


def _ended(pid: str) -> bool:
    """Whether process ``pid`` is gone (or a zombie nobody reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
