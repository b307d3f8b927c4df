"""Where the cells of a suite run: inline, as local processes, or as Slurm jobs (through submitit).

The engine already runs one cell: ``bench run SUITE --only CELL``. An executor only decides
where that command runs. ``inline`` is today's loop in the ``bench run`` process (handled by
:mod:`bench_core.runner`, nothing here); ``local`` starts each cell as a process of its own
with submitit's local executor (``max_parallel`` at a time, through lock-file slots); ``slurm``
submits one Slurm job-array task per cell with submitit. A cell that needs several ranks
(``gpus_per_cell`` > 1, ``nodes`` > 1) gets one task per rank in its allocation, and each task
joins the engine's torch.distributed path through the environment torchrun would set.

A job never touches the main store (WAL SQLite is unsafe across the nodes of a network file
system): it runs its cell against a store on node-local disk (``BENCH_STORE_FILE``), then
leaves a copy beside the main store for :func:`bench_core.collect.collect` to merge, exactly
once. Checkpoints go to the shared output dir as usual, so a preempted, timed-out (submitit
checkpoints and requeues it), cancelled or requeued job resumes from its last checkpoint.

Bookkeeping lives in a ``jobs`` table of the main store, one row per unit of work (a model
cell, with the baselines it was given to run): executor, job id, state, attempts, node, logs.
``bench status`` and ``bench cancel`` (:mod:`bench_core.jobstate`) read it with
``squeue``/``scancel`` (Slurm's accounting, ``sacct``, is used only when the cluster has it)
or the local processes' ids.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import glob
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.collect import PLACEHOLDER_RUN, collect, export_store, job_results_dir
from bench_core.fileio import write_atomic
from bench_core.jobstate import (
    ACTIVE,
    CellView,
    cell_views,
    count_line,
    log_tail,
    progress_file_of,
    refresh,
    save_job,
    write_state,
)
from bench_core.progress import PROGRESS_FILE_VAR
from bench_core.store import CellIdentity, ResultsStore, claimant
from bench_core.suite import Executor, Suite

__all__ = ["STORE_FILE_VAR", "CellJob", "Member", "Unit", "settings_for", "submit"]

STORE_FILE_VAR = "BENCH_STORE_FILE"  # the runner opens this store instead of OUTPUT/results.sqlite
SETTLED = ("done", "skipped")  # never resubmitted; a failed cell is, by the next `bench run`



# -- settings ---------------------------------------------------------------------------------------
def settings_for(suite: Suite, kind: str | None = None, options: list[str] | tuple[str, ...] = ()) -> Executor:
    """The suite's ``executor:`` with ``--executor`` and ``--executor-opt KEY=VALUE`` (YAML values) over it."""
    import yaml
    from pydantic import ValidationError

    data = suite.executor.model_dump(exclude_unset=True)
    for pair in options:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchError(f"--executor-opt {pair!r} is not KEY=VALUE")
        data[key.strip()] = yaml.safe_load(value)
    if kind:
        data["kind"] = kind
    try:
        return Executor.model_validate(data)
    except ValidationError as exc:
        where = suite.source_path or "the suite"
        lines = [_setting_problem(e) for e in exc.errors()]
        raise BenchError(f"executor settings ({where} `executor:` and --executor-opt):\n" + "\n".join(lines)) from None


def _setting_problem(error: dict[str, Any]) -> str:
    path = "executor." + ".".join(str(p) for p in error["loc"]) if error["loc"] else "executor"
    if error["type"] == "extra_forbidden":
        valid = list(Executor.model_fields)
        hint = difflib.get_close_matches(str(error["loc"][-1]), valid, n=1)
        return f"  {path}: unknown key{f'; did you mean {hint[0]!r}?' if hint else ''} (valid keys: {', '.join(valid)})"
    got = error.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return f"  {path}: {error['msg'].removeprefix('Value error, ')}{shown}"


def _ranks_per_node(settings: Executor) -> int:
    return settings.tasks_per_node or max(1, settings.gpus_per_cell // settings.nodes)


def _max_parallel(settings: Executor) -> int:
    """Cells at once: ``max_parallel``, else (local) as many as the usable cores allow."""
    if settings.max_parallel:
        return settings.max_parallel
    if settings.kind == "slurm":
        return 256  # submitit's default array parallelism
    from bench_core.provenance import usable_cores

    return max(1, usable_cores() // ((settings.cpus_per_task or 1) * _ranks_per_node(settings)))


# -- units of work ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """A cell a job is responsible for, with what a failure record of it needs."""

    key: str
    id: str
    label: str
    dataset: str
    seed: int
    kind: str


@dataclass(frozen=True)
class Unit:
    """One job's work: ``bench run --only CELL_ID``, running ``members`` and skipping the cells keyed ``skips``.

    ``--only`` plans one model cell and the baselines of its dataset; each pending baseline is
    given to one job, and the others are told to skip it (their store starts with it done).
    """

    key: str
    cell_id: str
    members: tuple[Member, ...]
    skips: tuple[str, ...]


def _member(runner: Any, cell: Any) -> Member:
    return Member(runner.cell_key(cell), cell.id, cell.label, cell.dataset.label, cell.seed, cell.kind)


def plan_units(runner: Any, cells: list[Any], settled: set[str], busy: set[str]) -> list[Unit]:
    """The units to submit for ``cells``: model cells neither ``settled`` nor ``busy``, baselines handed out once."""
    pending = {m.key: m for m in (_member(runner, b) for b in runner.baseline_cells(cells))}
    pending = {k: m for k, m in pending.items() if k not in settled and k not in busy}
    units = []
    for cell in cells:
        member = _member(runner, cell)
        if member.key in settled or member.key in busy:
            continue
        own = [_member(runner, b) for b in runner.baseline_cells([cell])]
        mine = [pending.pop(m.key) for m in own if m.key in pending]
        units.append(Unit(member.key, cell.id, (member, *mine), tuple(m.key for m in own if m not in mine)))
    for cell in cells:  # baselines of datasets whose model cells need no job: a job runs only those
        own = [_member(runner, b) for b in runner.baseline_cells([cell])]
        mine = [pending.pop(m.key) for m in own if m.key in pending]
        if mine:
            skips = (runner.cell_key(cell), *(m.key for m in own if m not in mine))
            units.append(Unit(mine[0].key, cell.id, tuple(mine), skips))
    return units


# -- the job: one cell, on whatever node it lands -------------------------------------------------------
@dataclass
class CellJob:
    """What a submitted job runs (pickled by submitit): ``bench run --only`` against a node-local store.

    submitit calls :meth:`checkpoint` on a time-limit or preemption signal and requeues the
    job; the cell then resumes from its last training checkpoint in the shared output dir.
    """

    unit: Unit
    suite_file: str
    output_dir: str
    suite_name: str
    options: tuple[str, ...] = ()  # bench's global options (-p NAME ...)
    slots: int = 0  # local executor: cells at once (lock-file slots); 0 on Slurm
    threads: int | None = None  # OMP_NUM_THREADS for the cell (unless the user set it)
    gpus_per_slot: int = 0  # local executor: CUDA devices of each slot

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        main = env.global_rank == 0
        out = Path(self.output_dir)
        with _slot(out, self.slots) if self.slots and main else contextlib.nullcontext(None) as slot:
            if main:
                state = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                         "job_id": str(env.job_id), "started": time.time()}  # fmt: skip
                write_state(out, self.unit.key, state)
            self._environment(env.num_tasks, slot)
            tmp = Path(tempfile.mkdtemp(prefix="bench-job-")) if main else None
            try:
                if tmp is not None:
                    os.environ[STORE_FILE_VAR] = str(self._seeded_store(tmp / "results.sqlite"))
                from bench_core.cli import main as bench

                return bench(self.argv())
            finally:
                if tmp is not None:
                    self._leave_results(tmp / "results.sqlite", env.job_id)
                    shutil.rmtree(tmp, ignore_errors=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on SIGUSR2 (time limit, preemption): requeue this same job."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)

    def argv(self) -> list[str]:
        """The ``bench`` command line the job runs in-process."""
        return [*self.options, "run", self.suite_file, "--only", glob.escape(self.unit.cell_id), "--output",
                self.output_dir, "--executor", "inline", "--no-report", "--no-progress"]  # fmt: skip

    def _environment(self, ranks: int, slot: int | None) -> None:
        from bench_core.provenance import ENGINE_SET_VARS

        os.environ[PROGRESS_FILE_VAR] = str(progress_file_of(Path(self.output_dir), self.unit.key))
        ours = set(filter(None, os.environ.get(ENGINE_SET_VARS, "").split(",")))
        if self.threads and ("OMP_NUM_THREADS" not in os.environ or "OMP_NUM_THREADS" in ours):
            os.environ["OMP_NUM_THREADS"] = str(self.threads)  # the cell's share, not the whole node
            os.environ[ENGINE_SET_VARS] = ",".join(sorted(ours | {"OMP_NUM_THREADS"}))
        if slot is not None and self.gpus_per_slot:
            first = slot * self.gpus_per_slot
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(self.gpus_per_slot))
        if ranks > 1:  # one task per rank: the variables torchrun would set, from Slurm's (or the local) job
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)

    def _seeded_store(self, path: Path) -> Path:
        """A fresh job store holding the cells this job must skip as done (never merged: placeholder run)."""
        store = ResultsStore(path)
        try:
            for key in self.unit.skips:
                placeholder = CellIdentity(key, self.suite_name, "-", "-", 0)
                store.record_cell(placeholder, PLACEHOLDER_RUN, "done", "run by another job")
        finally:
            store.close()
        return path

    def _leave_results(self, store_file: Path, job_id: str) -> None:
        """Copy the job store beside the main store (atomically) when it holds a finished cell."""
        if not store_file.exists():
            return
        conn = sqlite3.connect(store_file)
        try:
            finished = conn.execute(
                "SELECT COUNT(*) FROM cells WHERE status != 'running' AND run_id != ?", (PLACEHOLDER_RUN,)
            ).fetchone()[0]
        finally:
            conn.close()
        if finished:
            name = f"{_slug(self.unit.cell_id)}.{job_id}.{time.time_ns()}.sqlite"
            export_store(store_file, job_results_dir(Path(self.output_dir)) / name)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@contextlib.contextmanager
def _slot(output_dir: Path, slots: int) -> Iterator[int]:
    """Hold one of ``slots`` lock files (``OUTPUT/jobs/slots/N.lock``) until the block ends; yield its number."""
    folder = output_dir / "jobs" / "slots"
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for number in range(slots):
            fh = open(folder / f"{number}.lock", "a")  # noqa: SIM115 (held for the block)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield number
            finally:
                fh.close()  # releases the lock; a killed process's lock goes with it
            return
        time.sleep(0.5)


# -- backends: submit, ask, cancel ------------------------------------------------------------------------
@dataclass(frozen=True)
class Submitted:
    """A job as the backend returned it on submission."""

    job_id: str
    stdout: str
    stderr: str
    token: str = ""  # local: the controller process's identity (host, boot, pid, start time)


def _submitit_folder(output_dir: Path) -> Path:
    return output_dir / "jobs" / "submitit"


def _submit_jobs(settings: Executor, output_dir: Path, jobs: list[CellJob]) -> list[Submitted]:
    """Submit ``jobs`` through submitit (one Slurm array, or local processes in sessions of their own)."""
    try:
        import submitit
    except ImportError:
        raise BenchError(f"--executor {settings.kind} needs submitit: pip install 'medgen-bench[cluster]'") from None

    folder = _submitit_folder(output_dir)
    if settings.kind == "slurm":
        executor: Any = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_timeouts)
        executor.update_parameters(**_sbatch_parameters(settings, jobs[0].suite_name))
    else:
        executor = _session_local_executor(folder=folder, max_num_timeout=settings.max_timeouts)
        gpus = settings.gpus_per_cell * _max_parallel(settings) if settings.gpus_per_cell == 1 else 0
        executor.update_parameters(timeout_min=settings.time_min, tasks_per_node=_ranks_per_node(settings),
                                   gpus_per_node=gpus or settings.gpus_per_cell, setup=settings.setup)  # fmt: skip
    try:
        with executor.batch():
            handles = [executor.submit(job) for job in jobs]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
        detail = getattr(exc, "stderr", None) or getattr(exc, "output", None) or exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise BenchError(f"{settings.kind}: submitting {len(jobs)} jobs failed: {str(detail).strip()}") from None
    out = []
    for handle in handles:
        token = claimant(int(handle.job_id)) if settings.kind == "local" else ""
        out.append(Submitted(str(handle.job_id), str(handle.paths.stdout), str(handle.paths.stderr), token))
    return out


def _sbatch_parameters(settings: Executor, suite_name: str) -> dict[str, Any]:
    params = {
        "job_name": f"bench-{suite_name}", "time": settings.time_min, "nodes": settings.nodes,
        "ntasks_per_node": _ranks_per_node(settings), "partition": settings.partition, "account": settings.account,
        "qos": settings.qos, "cpus_per_task": settings.cpus_per_task,
        "gpus_per_node": settings.gpus_per_cell // settings.nodes or None,
        "mem": f"{int(settings.mem_gb * 1024)}MB" if settings.mem_gb else None, "setup": settings.setup or None,
        "additional_parameters": {k.replace("_", "-"): v for k, v in settings.sbatch.items()} or None,
        "array_parallelism": _max_parallel(settings),
    }  # fmt: skip
    return {k: v for k, v in params.items() if v is not None}


def _session_local_executor(**kwargs: Any) -> Any:
    """submitit's local executor, its job controllers in sessions of their own.

    So Ctrl-C in the terminal of ``bench run`` (which signals the whole foreground process group)
    and the terminal closing leave the cells running, as they would on Slurm.
    """
    from submitit.local import local

    class SessionLocalExecutor(local.LocalExecutor):
        def _submit_command(self, command: str) -> Any:
            popen = local.subprocess.Popen
            log = self.folder / "controllers.log"  # not the terminal (or pipe) of `bench run`, which may go away

            def detached(*args: Any, **kw: Any) -> Any:
                with open(log, "ab") as out:
                    return popen(*args, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, **kw)  # fmt: skip

            local.subprocess = _ModuleWith(local.subprocess, Popen=detached)
            try:
                return super()._submit_command(command)
            finally:
                local.subprocess = sys.modules["subprocess"]

    return SessionLocalExecutor(**kwargs)


class _ModuleWith:
    """A module seen through one replaced attribute."""

    def __init__(self, module: Any, **replaced: Any) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced[name] if name in self._replaced else getattr(self._module, name)


# -- bench run --executor local|slurm ----------------------------------------------------------------------
@dataclass
class Outcome:
    """What the submitting ``bench run`` did: its exit code, and whether it waited for every cell."""

    code: int
    waited: bool
    output_dir: Path
    summary: dict[str, int]


def submit(args: Any, settings: Executor, log=print) -> Outcome:
    """Submit the cells of ``args.suite`` not done yet, print the job ids, then wait (unless ``args.detach``)."""
    from bench_core.plugins import load_registry
    from bench_core.runner import Console, Runner, plan
    from bench_core.suite import load_suite

    suite = load_suite(args.suite)
    registry = load_registry(only=args.plugin)
    runner = Runner(suite, registry, output_dir=args.output, console=Console(progress=False))
    output_dir = runner.output_dir.resolve()
    cells = plan(suite, args.only)
    if not cells:
        raise BenchError("no cells match the suite's include/exclude and --only filters")
    runner.preflight(cells)
    store = _start(runner, suite, output_dir)
    try:
        collect(output_dir, store)
        jobs = {r["unit"]: r for r in refresh(store, output_dir)}
        settled = {c["cell_key"] for c in store.cells(suite.name) if c["status"] in SETTLED}
        busy = {k: r for r in jobs.values() if r["state"] in ACTIVE for k in json.loads(r["cells"])}
        for key, row in busy.items():
            if key == row["unit"]:
                log(f"~ {row['cell_id']}: already {row['state']} as job {row['job_id']} (not resubmitted)")
        units = plan_units(runner, cells, settled, set(busy))
        rows = _submit_units(store, settings, suite, output_dir, units, list(args.plugin), jobs, log)
        if not units:
            log(f"nothing to submit: {len(settled)} cells finished, {len(busy)} queued or running")
        if args.detach:
            log(f"detached: `bench status {output_dir}` follows them, `bench cancel {output_dir}` cancels them")
            return Outcome(0, False, output_dir, {})
        wanted = set(busy) | {m.key for u in units for m in u.members}
        if not wanted:
            return Outcome(0, True, output_dir, {"finished earlier": len(settled)})
        return _wait(store, settings, suite, output_dir, wanted, rows, list(args.plugin), log)
    finally:
        store.close()


def _start(runner: Any, suite: Suite, output_dir: Path) -> ResultsStore:
    """The main store with the suite's whole plan recorded (what tables show), the suite file beside it.

    No run is recorded here: each job records its own run (environment, device) with its cells.
    """
    from bench_core.cells import plan as whole_plan

    output_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(output_dir)
    everything = whole_plan(suite)
    keys = [runner.cell_key(c) for c in [*runner.baseline_cells(everything), *everything]]
    store.record_plan(suite.name, "submitted-" + time.strftime("%Y%m%d-%H%M%S"), keys)
    write_atomic(output_dir / "suite.yaml", suite.source_path.read_text() if suite.source_path else "")
    return store


def _submit_units(store: ResultsStore, settings: Executor, suite: Suite, output_dir: Path, units: list[Unit],
                  options: list[str], previous: dict[str, dict[str, Any]], log) -> list[dict[str, Any]]:  # fmt: skip
    """Submit ``units`` as one batch; record and print a job row for each."""
    if not units:
        return []
    prefix = tuple(o for name in options for o in ("-p", name))
    slots = _max_parallel(settings) if settings.kind == "local" else 0
    threads = settings.cpus_per_task or (_local_threads(settings) if settings.kind == "local" else None)
    gpus = settings.gpus_per_cell if settings.kind == "local" and settings.gpus_per_cell == 1 else 0
    suite_file = str(Path(suite.source_path).resolve()) if suite.source_path else ""
    jobs = [CellJob(u, suite_file, str(output_dir), suite.name, prefix, slots, threads, gpus) for u in units]
    submitted = _submit_jobs(settings, output_dir, jobs)
    rows, now = [], time.time()
    for unit, sub in zip(units, submitted, strict=True):
        before = previous.get(unit.key)
        row = {"unit": unit.key, "suite": suite.name, "cell_id": unit.cell_id, "executor": settings.kind,
               "cells": json.dumps({m.key: m.id for m in unit.members}), "job_id": sub.job_id, "state": "queued",
               "attempts": (before["attempts"] + 1) if before else 1, "reason": None, "node": None,
               "submitted": now, "updated": now, "ended": None, "stdout": sub.stdout, "stderr": sub.stderr,
               "token": sub.token}  # fmt: skip
        save_job(store, row)
        rows.append(row)
        also = [m.id for m in unit.members if m.id != unit.cell_id]
        log(f"submitted {unit.cell_id}{f' (with {len(also)} baselines)' if also else ''}: job {sub.job_id}")
    return rows


def _local_threads(settings: Executor) -> int:
    from bench_core.provenance import usable_cores

    return max(1, usable_cores() // (_max_parallel(settings) * _ranks_per_node(settings)))


def _wait(store: ResultsStore, settings: Executor, suite: Suite, output_dir: Path, wanted: set[str],
          submitted: list[dict[str, Any]], options: list[str], log) -> Outcome:  # fmt: skip
    """Follow the jobs of ``wanted`` cells until none is queued or running; retry failures ``max_retries`` times."""
    retries: dict[str, int] = {}
    shown: dict[str, str] = {}
    live = _LiveLine()
    try:
        while True:
            collect(output_dir, store)
            jobs = refresh(store, output_dir)
            collect(output_dir, store)
            views = [v for v in cell_views(store, output_dir, suite.name, jobs) if v.key in wanted]
            for view in views:
                if shown.get(view.key, "queued") != view.state:  # submitted cells start queued (printed then)
                    live.clear()
                    _announce(view, log)
                shown[view.key] = view.state
            again = _retry(store, settings, suite, output_dir, views, jobs, retries, options, live, log)
            live.show(f"{settings.kind}: {len(views)} cells: {count_line(views)}")
            if not again and not any(v.state in (*ACTIVE, "waiting") for v in views):
                break
            time.sleep(settings.poll_s)
    except KeyboardInterrupt:
        live.clear()
        log(f"stopped waiting; the jobs go on: `bench status {output_dir}`, `bench cancel {output_dir}`")
        return Outcome(130, False, output_dir, {})
    live.clear()
    summary = {name: sum(v.state == name for v in views) for name in ("done", "failed", "skipped")}
    return Outcome(1 if summary["failed"] else 0, True, output_dir, summary)


def _announce(view: CellView, log) -> None:
    mark = {"done": "✓", "failed": "✗", "skipped": "-", "running": "▶", "queued": "…"}.get(view.state, "·")
    log(f"{mark} {view.id}: {view.state}" + (f": {view.detail}" if view.detail else ""))
    if view.state == "failed" and view.logs:
        log(f"  log: {', '.join(view.logs)}")
        for line in log_tail(view.logs, 15):
            log(f"  | {line}")


def _retry(store: ResultsStore, settings: Executor, suite: Suite, output_dir: Path, views: list[CellView],
           jobs: list[dict[str, Any]], retries: dict[str, int], options: list[str], live, log) -> bool:  # fmt: skip
    """Resubmit the units of failed cells that have retries left; True when something was resubmitted."""
    failed = {v.key for v in views if v.state == "failed"}
    by_unit = {j["unit"]: j for j in jobs}
    again = [j for j in by_unit.values() if j["state"] not in (*ACTIVE, "cancelled")
             and failed & set(json.loads(j["cells"])) and retries.get(j["unit"], 0) < settings.max_retries]  # fmt: skip
    if not again:
        return False
    from bench_core.cells import plan as whole_plan
    from bench_core.plugins import load_registry
    from bench_core.runner import Console, Runner

    runner = Runner(suite, load_registry(only=options), output_dir=output_dir, console=Console(progress=False))
    cells = {c.id: c for c in whole_plan(suite)}
    settled = {c["cell_key"] for c in store.cells(suite.name) if c["status"] in SETTLED}
    units = []
    for job in again:
        retries[job["unit"]] = retries.get(job["unit"], 0) + 1
        keys = set(json.loads(job["cells"])) - settled
        cell = cells[job["cell_id"]]
        own = [_member(runner, c) for c in [cell, *runner.baseline_cells([cell])]]
        members = tuple(m for m in own if m.key in keys)
        units.append(Unit(job["unit"], job["cell_id"], members, tuple(m.key for m in own if m.key not in keys)))
    live.clear()
    log(f"retrying {len(units)} failed cells (max_retries {settings.max_retries})")
    _submit_units(store, settings, suite, output_dir, units, options, by_unit, log)
    return True


class _LiveLine:
    """One status line rewritten in place on a terminal; printed only when it changes otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        changed, self.last = text != self.last, text
        stamped = f"[{time.strftime('%H:%M:%S')}] {text}"
        if self.tty:
            sys.stdout.write("\r\033[K" + stamped)
            sys.stdout.flush()
        elif changed:
            print(stamped, flush=True)

    def clear(self) -> None:
        if self.tty and self.last:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
