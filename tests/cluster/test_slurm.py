"""`bench run --executor slurm` against a real single-node Slurm cluster (the ``slurm`` fixture).

The cluster has no accounting storage (submitit warns that sacct is disabled); cell states come
from squeue and the store. Each cell uses one CPU (``cpus_per_task: 1``), so two run at once here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cluster_helpers import query, slow_model, wait_for

pytestmark = pytest.mark.slow

SLURM = {"kind": "slurm", "cpus_per_task": 1, "poll_s": 0.5}


def _squeue(env: dict[str, str], job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %r"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    return done.stdout.strip()


def _train_states(out) -> list:
    return list(out.glob("checkpoints/*/*train_state.pt"))


def _resumed(store, seed: int) -> int:
    ((details,),) = query(store, "SELECT details FROM cells WHERE model='toy-ae' AND seed=?", (seed,))
    return json.loads(details)["stages"][0]["resumed_from"]


def _requeued_job_released(env: dict[str, str], job_id: str) -> None:
    """Slurm holds a requeued batch job for a while (reason BeginTime); let it start now instead."""
    wait_for(lambda: _squeue(env, job_id).startswith("PENDING"), 30, f"job {job_id} to be requeued")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], env=env, check=True, timeout=30)


def test_a_job_array_runs_each_cell_and_stores_every_row_once(tmp_path, bench, slurm_env, suite_file):
    path = suite_file(seeds=[0, 1, 2], executor=SLURM)
    done = bench("run", str(path), "--output", "out", env=slurm_env)
    assert done.returncode == 0, done.stdout + done.stderr
    store = tmp_path / "out" / "results.sqlite"
    jobs = dict(query(store, "SELECT cell_id, job_id FROM jobs"))
    array = {job.split("_")[0] for job in jobs.values()}
    assert len(jobs) == 3 and len(array) == 1 and sorted(j.split("_")[1] for j in jobs.values()) == ["0", "1", "2"]
    for cell, job in jobs.items():
        assert f"submitted {cell}" in done.stdout and f"job {job}" in done.stdout
    assert query(store, "SELECT status, COUNT(*) FROM cells GROUP BY status") == [("done", 4)]
    # Every row once: the same (task, metric) set for each seed, each cell taken from exactly one job file.
    per_seed = {}
    for seed, task, metric in query(store, "SELECT seed, task, metric FROM results WHERE model='toy-ae'"):
        per_seed.setdefault(seed, []).append((task, metric))
    assert len(per_seed) == 3 and all(sorted(rows) == sorted(per_seed[0]) for rows in per_seed.values())
    assert all(len(rows) == len(set(rows)) for rows in per_seed.values())
    merged = [key for (cells,) in query(store, "SELECT cells FROM merged") for key in json.loads(cells)]
    assert len(merged) == len(set(merged)) == 4
    assert (tmp_path / "out" / "index.html").exists()
    rows = query(store, "SELECT COUNT(*) FROM results")
    status = bench("status", "out", env=slurm_env)
    assert status.returncode == 0 and "0 queued, 0 running, 4 done, 0 failed" in status.stdout
    assert bench("report", "out", env=slurm_env).returncode == 0
    assert query(store, "SELECT COUNT(*) FROM results") == rows
    again = bench("run", str(path), "--output", "out", env=slurm_env)
    assert "nothing to submit: 4 cells finished" in again.stdout and "submitted" not in again.stdout


def test_scancelled_and_requeued_jobs_resume_from_their_checkpoints(tmp_path, bench, slurm_env, suite_file):
    path = suite_file(seeds=[0, 1], models=[slow_model()], executor=SLURM)
    done = bench("run", str(path), "--output", "out", "--detach", env=slurm_env)
    assert done.returncode == 0 and "detached" in done.stdout, done.stdout + done.stderr
    out, store = tmp_path / "out", tmp_path / "out" / "results.sqlite"
    jobs = dict(query(store, "SELECT cell_id, job_id FROM jobs"))
    cancelled, requeued = jobs["toy-ae/toy/seed0"], jobs["toy-ae/toy/seed1"]
    wait_for(lambda: len(_train_states(out)) == 2, 90, "both cells' first training checkpoints")
    subprocess.run(["scancel", cancelled], env=slurm_env, check=True, timeout=30)
    subprocess.run(["scontrol", "requeue", requeued], env=slurm_env, check=True, timeout=30)
    _requeued_job_released(slurm_env, requeued)
    wait_for(lambda: _squeue(slurm_env, cancelled).startswith("CANCELLED"), 30, "the cancelled job to end")
    # Run again: the cancelled cell is submitted anew, the requeued one (queued or running) is left alone.
    again = bench("run", str(path), "--output", "out", "--no-report", env=slurm_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "~ toy-ae/toy/seed1: already " in again.stdout and "submitted toy-ae/toy/seed0" in again.stdout
    assert "submitted toy-ae/toy/seed1" not in again.stdout
    after = {cell: (job, tries) for cell, job, tries in query(store, "SELECT cell_id, job_id, attempts FROM jobs")}
    assert after["toy-ae/toy/seed1"] == (requeued, 1) and after["toy-ae/toy/seed0"][1] == 2
    assert after["toy-ae/toy/seed0"][0] != cancelled
    assert _resumed(store, 0) > 0 and _resumed(store, 1) > 0  # neither started over
    assert query(store, "SELECT status, COUNT(*) FROM cells GROUP BY status") == [("done", 3)]


def test_preemption_signal_checkpoints_requeues_and_resumes(tmp_path, bench, slurm_env, suite_file):
    # What Slurm sends before a time limit, and what submitit takes as preemption: SIGUSR2 (--signal=USR2@90).
    # 15 s of training: the signal must reach the job while it trains, also on a loaded machine where this
    # process polls late (with 6 s, the job had finished before the signal when two other processes hogged the CPU).
    path = suite_file(models=[slow_model(steps=60)], executor=SLURM)
    assert bench("run", str(path), "--output", "out", "--detach", env=slurm_env).returncode == 0
    out, store = tmp_path / "out", tmp_path / "out" / "results.sqlite"
    ((job,),) = query(store, "SELECT job_id FROM jobs")
    wait_for(lambda: _train_states(out), 90, "the first training checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm_env, check=True, timeout=30)
    _requeued_job_released(slurm_env, job)
    done = bench("run", str(path), "--output", "out", "--no-report", env=slurm_env)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "jobs" / "submitit" / f"{job}_0_log.out").read_text()
    assert "this job is preempted" in log and "Calling checkpoint method" in log and f"Requeued job {job}" in log
    assert _resumed(store, 0) > 0
    assert query(store, "SELECT job_id, attempts FROM jobs") == [(job, 1)]


def test_two_status_commands_collecting_at_once_merge_each_job_once(tmp_path, bench, slurm_env, suite_file):
    path = suite_file(seeds=[0, 1], executor=SLURM)
    assert bench("run", str(path), "--output", "out", "--detach", env=slurm_env).returncode == 0
    out, store = tmp_path / "out", tmp_path / "out" / "results.sqlite"
    jobs = [job for (job,) in query(store, "SELECT job_id FROM jobs")]
    wait_for(lambda: all(_squeue(slurm_env, j).startswith("COMPLETED") for j in jobs), 90, "both jobs to complete")
    assert len(list((out / "jobs" / "results").glob("*.sqlite"))) == 2  # left by the jobs, nothing merged yet
    assert query(store, "SELECT COUNT(*) FROM results") == [(0,)]
    command = [sys.executable, "-m", "bench_core", "status", "out"]
    both = [subprocess.Popen(command, cwd=tmp_path, env=slurm_env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=60)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0]
    assert all("0 queued, 0 running, 3 done, 0 failed" in text for text in outputs), outputs
    assert query(store, "SELECT COUNT(*) FROM merged") == [(2,)]
    assert query(store, "SELECT status, COUNT(*) FROM cells GROUP BY status") == [("done", 3)]
    rows = query(store, "SELECT cell_key, task, metric FROM results")
    assert rows and len(rows) == len(set(rows))
    assert sorted(p.suffix for p in (out / "jobs" / "results").iterdir()) == [".merged", ".merged"]


def test_a_cell_with_two_ranks_trains_through_torch_distributed_in_one_allocation(tmp_path, bench, slurm_env,
                                                                                  suite_file):  # fmt: skip
    path = suite_file(executor={**SLURM, "tasks_per_node": 2})  # on GPUs: gpus_per_cell: 2, one task per GPU
    done = bench("run", str(path), "--output", "out", "--no-report", env=slurm_env)
    assert done.returncode == 0, done.stdout + done.stderr
    store = tmp_path / "out" / "results.sqlite"
    assert [json.loads(p)["world_size"] for (p,) in query(store, "SELECT provenance FROM runs")] == [2]
    assert query(store, "SELECT status, COUNT(*) FROM cells GROUP BY status") == [("done", 2)]
    submitit = tmp_path / "out" / "jobs" / "submitit"
    assert len(list(submitit.glob("*_0_log.out"))) == 1 and len(list(submitit.glob("*_1_log.out"))) == 1
