"""What the jobs of an output dir are doing: their state files, Slurm's and the local processes' view
of them, the ``jobs`` table, one line per cell, and ``bench status`` / ``bench cancel``.

:mod:`bench_core.executors` submits the jobs; this module only reads and records their state, so
``bench status`` works from any machine that sees the output dir (and, for Slurm jobs, runs
``squeue``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.collect import collect
from bench_core.fileio import write_atomic
from bench_core.progress import describe, read_progress
from bench_core.store import ResultsStore, claimant

ACTIVE = ("queued", "running")
RESULT_GRACE_S = {"slurm": 30.0, "local": 0.0}  # a network file system may show a job's result file late

_JOBS_TABLE = """CREATE TABLE IF NOT EXISTS jobs (
    unit TEXT PRIMARY KEY, suite TEXT NOT NULL, cell_id TEXT NOT NULL, cells TEXT NOT NULL,
    executor TEXT NOT NULL, job_id TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    reason TEXT, node TEXT, submitted REAL NOT NULL, updated REAL NOT NULL, ended REAL,
    stdout TEXT, stderr TEXT, token TEXT
)"""
_JOB_COLUMNS = ("unit", "suite", "cell_id", "cells", "executor", "job_id", "state", "attempts", "reason", "node",
                "submitted", "updated", "ended", "stdout", "stderr", "token")  # fmt: skip


# -- state files: what a job writes beside the output dir -----------------------------------------------
def state_file(output_dir: Path, unit: str) -> Path:
    """The job's state file (written by the job when it starts: host, pid, job id, start time)."""
    return output_dir / "jobs" / "state" / f"{unit}.json"


def progress_file_of(output_dir: Path, unit: str) -> Path:
    """Where a job's training loop keeps its stage, step and loss (bench_core.progress)."""
    return output_dir / "jobs" / "state" / f"{unit}.progress.json"


def write_state(output_dir: Path, unit: str, state: dict[str, Any]) -> None:
    """Replace the job's state file (atomically; not fsynced: it is rewritten on every start)."""
    write_atomic(state_file(output_dir, unit), json.dumps(state), durable=False)


def read_state(output_dir: Path, unit: str) -> dict[str, Any]:
    """The job's state file, with its training progress under ``"progress"`` when it has written any."""
    try:
        state = json.loads(state_file(output_dir, unit).read_text())
    except (OSError, ValueError):
        return {}
    progress = read_progress(progress_file_of(output_dir, unit))
    if progress is not None and progress.get("updated", 0) >= state.get("started", 0):  # not an earlier attempt's
        state["progress"] = progress
    return state


@dataclass(frozen=True)
class JobState:
    """A job as its scheduler sees it."""

    state: str  # queued, running, ended
    node: str = ""
    reason: str = ""


def _slurm_states(job_ids: list[str]) -> dict[str, JobState]:
    """States of Slurm jobs from ``squeue`` (array tasks one per line), then ``sacct`` for those it no longer lists."""
    wanted = set(job_ids)
    found: dict[str, JobState] = {}
    try:
        done = subprocess.run(["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%r"], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
    except FileNotFoundError:
        raise BenchError("squeue not found: follow Slurm jobs from a machine of their cluster") from None
    if done.returncode != 0:
        raise BenchError(f"squeue failed: {done.stderr.strip()}")
    for line in done.stdout.splitlines():
        job_id, state, node, reason = (line.split("|") + ["", "", ""])[:4]
        if job_id in wanted:
            found[job_id] = _slurm_state(state, node, reason)
    for job_id in wanted - set(found):
        found[job_id] = JobState("ended", "", _sacct_state(job_id) or "no longer in the queue")
    return found


def _slurm_state(state: str, node: str, reason: str) -> JobState:
    if state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"):
        return JobState("queued", "", reason if reason not in ("None", "(null)") else "")
    if state in ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"):
        return JobState("running", node)
    return JobState("ended", node, state)


def _sacct_state(job_id: str) -> str:
    """The job's final state from Slurm's accounting, or '' where the cluster keeps none."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()[0]
    return ""


def _local_alive(pid: int, token: str) -> bool:
    """Whether the local job's controller process (identified by ``token``) still runs; reaps it if it is ours."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # the submitting process's own finished children would stay zombies
    with contextlib.suppress(OSError, IndexError):  # a zombie (its parent gone, nobody reaping) has ended too
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return claimant(pid) == token


def _local_state(output_dir: Path, row: dict[str, Any]) -> JobState:
    """A local job: queued while its process waits for a slot, running once it holds one, else ended."""
    if not _local_alive(int(row["job_id"]), row["token"]):
        return JobState("ended", row["node"] or "", "process ended")
    state = read_state(output_dir, row["unit"])
    if state.get("state") == "running" and state.get("started", 0) >= row["submitted"] - 1:
        return JobState("running", state.get("host", ""))
    return JobState("queued", "", "waiting for a slot (max_parallel)")


# -- the jobs table --------------------------------------------------------------------------------------
def job_rows(store: ResultsStore, suite: str | None = None) -> list[dict[str, Any]]:
    """The ``jobs`` table's rows (of ``suite``, or all), oldest submission first."""
    with store.transaction() as cur:
        cur.execute(_JOBS_TABLE)
        sql, args = "SELECT * FROM jobs", ()
        if suite:
            sql, args = sql + " WHERE suite=?", (suite,)
        return [dict(row) for row in cur.execute(sql + " ORDER BY submitted, unit", args)]


def save_job(store: ResultsStore, row: dict[str, Any]) -> None:
    """Insert or replace one row of the ``jobs`` table."""
    with store.transaction() as cur:
        cur.execute(_JOBS_TABLE)
        marks = ", ".join("?" * len(_JOB_COLUMNS))
        cur.execute(f"INSERT OR REPLACE INTO jobs({', '.join(_JOB_COLUMNS)}) VALUES ({marks})",
                    [row.get(c) for c in _JOB_COLUMNS])  # fmt: skip


def refresh(store: ResultsStore, output_dir: Path) -> list[dict[str, Any]]:
    """Ask Slurm / the local processes about every active job, record what changed; return all job rows."""
    rows = job_rows(store)
    active = [r for r in rows if r["state"] in ACTIVE]
    slurm_ids = [r["job_id"] for r in active if r["executor"] == "slurm"]
    states = _slurm_states(slurm_ids) if slurm_ids else {}
    now = time.time()
    for row in active:
        seen = states[row["job_id"]] if row["executor"] == "slurm" else _local_state(output_dir, row)
        if (seen.state, seen.node or row["node"], seen.reason) == (row["state"], row["node"], row["reason"]):
            continue
        row.update(state=seen.state, node=seen.node or row["node"], reason=seen.reason, updated=now)
        if seen.state == "ended":
            row["ended"] = now
        save_job(store, row)
    return rows


# -- what each cell is doing --------------------------------------------------------------------------
@dataclass
class CellView:
    """One cell as ``bench status`` shows it."""

    id: str
    key: str
    state: str  # queued, running, done, failed, skipped, waiting (a job ended; its result not yet seen)
    detail: str = ""
    logs: tuple[str, ...] = ()  # the job's stdout and stderr, for a failed cell


def cell_views(store: ResultsStore, output_dir: Path, suite: str, jobs: list[dict[str, Any]]) -> list[CellView]:
    """Every cell of ``suite``'s current plan that was submitted or has a result, with its state."""
    cells = {c["cell_key"]: c for c in store.cells(suite)}
    plan = store.plan_keys(suite)
    views: dict[str, CellView] = {}
    for job in jobs:
        if job["suite"] != suite:
            continue
        for key, cell_id in json.loads(job["cells"]).items():
            if plan is not None and key not in plan:
                continue  # a cell of an earlier version of the suite
            views[key] = _view(key, cell_id, job, cells.get(key), read_state(output_dir, job["unit"]))
    for key, cell in cells.items():
        if key not in views and (plan is None or key in plan):
            views[key] = CellView(_cell_id(cell), key, cell["status"], cell["reason"] or "")
    order = {"running": 0, "queued": 1, "waiting": 2, "failed": 3, "done": 4, "skipped": 5}
    return sorted(views.values(), key=lambda v: (order.get(v.state, 9), v.id))


def _cell_id(cell: dict[str, Any]) -> str:
    return f"{cell['model']}/{cell['dataset']}" + (f"/seed{cell['seed']}" if cell.get("kind") != "baseline" else "")


def _view(key: str, cell_id: str, job: dict[str, Any], cell: dict[str, Any] | None, state: dict) -> CellView:
    where = f"job {job['job_id']}" + (f" on {job['node']}" if job["node"] else "")
    tries = f", attempt {job['attempts']}" if job["attempts"] > 1 else ""
    if job["state"] == "running":
        started = state.get("started", 0) if state.get("job_id") == job["job_id"] else 0
        since = _ago(started if started >= job["submitted"] - 1 else job["updated"])
        progress = state.get("progress") if started else None
        doing = f"; {describe(progress)}" if progress else _last_line(job["stdout"])
        return CellView(cell_id, key, "running", f"{where}{tries}, {since}{doing}")
    if job["state"] == "queued":
        return CellView(cell_id, key, "queued", f"{where}{tries}" + (f" ({job['reason']})" if job["reason"] else ""))
    if cell is not None and cell["status"] in ("done", "failed", "skipped"):
        logs = (job["stdout"], job["stderr"]) if cell["status"] == "failed" else ()
        return CellView(cell_id, key, cell["status"], cell["reason"] or "", logs)
    if job["state"] == "cancelled":
        return CellView(cell_id, key, "failed", f"cancelled ({where}); `bench run` resumes it")
    if time.time() - (job["ended"] or 0) < RESULT_GRACE_S.get(job["executor"], 0):
        return CellView(cell_id, key, "waiting", f"{where} ended; waiting for its result file")
    last = _last_line(job["stderr"]) or _last_line(job["stdout"])
    reason = f"{where} ended without a result ({job['reason'] or 'unknown'}){last}"
    return CellView(cell_id, key, "failed", reason, (job["stdout"], job["stderr"]))


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"for {s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"for {s // 60}m{s % 60:02d}s"


def _last_line(log: str | None) -> str:
    lines = _tail(log, 1)
    return f"; last: {lines[-1].strip()[:120]}" if lines else ""


def log_tail(logs: tuple[str, ...], n: int) -> list[str]:
    """The last ``n`` lines of a job's stderr, or of its stdout when stderr holds nothing of the engine's."""
    for log in reversed(logs):
        lines = _tail(log, n)
        if lines:
            return lines
    return []


def _tail(log: str | None, n: int) -> list[str]:
    if not log:
        return []
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return [line for line in lines if not line.startswith("submitit ")][-n:]  # the engine's lines, not submitit's


def format_views(views: list[CellView]) -> str:
    """The per-cell lines of ``bench status``."""
    width = max((len(v.id) for v in views), default=0)
    out = []
    for view in views:
        detail = f"  {view.detail}" if view.detail else ""
        out.append(f"  {view.id:<{width}}  {view.state:<8}{detail}".rstrip())
        if view.state == "failed" and view.logs:
            out.append(f"  {'':<{width}}  {'':<8}  log: {', '.join(view.logs)}")
    return "\n".join(out)


def count_line(views: list[CellView]) -> str:
    """``2 queued, 1 running, 3 done, 0 failed``: how many cells are in each state."""
    names = ("queued", "running", "waiting", "done", "failed", "skipped")
    counts = {name: sum(v.state == name for v in views) for name in names}
    return ", ".join(f"{counts[n]} {n}" for n in names if counts[n] or n in ("queued", "running", "done", "failed"))


# -- bench status / bench cancel ---------------------------------------------------------------------------
def _open_existing(output_dir: Path) -> ResultsStore:
    from bench_core.store import STORE_NAME

    if not (output_dir / STORE_NAME).exists():
        raise BenchError(f"no results store ({STORE_NAME}) in {output_dir}")
    return ResultsStore(output_dir)


def status(output_dir: str | Path) -> tuple[str, bool]:
    """``bench status``: merge finished jobs' results, ask the scheduler, describe every cell; (text, any failed)."""
    output_dir = Path(output_dir)
    store = _open_existing(output_dir)
    try:
        collect(output_dir, store)
        jobs = refresh(store, output_dir)
        collect(output_dir, store)  # results of jobs that ended while the scheduler was asked
        suites = sorted({j["suite"] for j in jobs} | {r["suite"] for r in store.runs()})
        parts, failed = [], False
        for suite in suites:
            views = cell_views(store, output_dir, suite, jobs)
            failed = failed or any(v.state == "failed" for v in views)
            kinds = sorted({j["executor"] for j in jobs if j["suite"] == suite}) or ["inline"]
            parts.append(f"suite {suite} ({'/'.join(kinds)}): {count_line(views)}\n{format_views(views)}")
        return "\n".join(parts) or f"no cells in {output_dir}", failed
    finally:
        store.close()


def cancel(output_dir: str | Path) -> str:
    """``bench cancel``: cancel every queued or running job of the output dir (``scancel``, or the local process)."""
    output_dir = Path(output_dir)
    store = _open_existing(output_dir)
    try:
        rows = [r for r in refresh(store, output_dir) if r["state"] in ACTIVE]
        slurm = [r["job_id"] for r in rows if r["executor"] == "slurm"]
        if slurm:
            done = subprocess.run(["scancel", *slurm], capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise BenchError(f"scancel {' '.join(slurm)} failed: {done.stderr.strip()}")
        for row in rows:
            if row["executor"] == "local" and _local_alive(int(row["job_id"]), row["token"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(row["job_id"]), signal.SIGINT)  # submitit's controller stops its tasks
            row.update(state="cancelled", reason="bench cancel", updated=time.time(), ended=time.time())
            save_job(store, row)
        if not rows:
            return f"nothing to cancel in {output_dir}"
        ids = ", ".join(f"{r['job_id']} ({r['cell_id']})" for r in rows)
        return f"cancelled {len(rows)} jobs: {ids}\nrun `bench run` again to resume them from their checkpoints"
    finally:
        store.close()
