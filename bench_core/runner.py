"""The runner: runs the cells of a suite (:mod:`bench_core.cells`) against one results store.

Per cell: claim it in the store (a cell finished earlier is kept, one another live process
runs is left to it), run it through the pipeline (:mod:`bench_core.pipeline`: prepare ->
train -> evaluate -> record), and commit its rows and status in one transaction. A cell
that raises, or whose loss stays non-finite, is recorded as failed and the others go on;
an incompatible pair is recorded as skipped with the reason. Finished cells are never
redone, so an interrupted suite continues where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core import distributed as ddp
from bench_core.api import BenchError
from bench_core.cells import BaselineCell, Cell, Datasets, SkipCell, baseline_cells, cell_key, plan
from bench_core.fileio import write_atomic
from bench_core.metric_reading import row_reading
from bench_core.pipeline import RunContext, run_baseline_cell, run_model_cell
from bench_core.plugins import Registry
from bench_core.preflight import preflight
from bench_core.provenance import environment
from bench_core.rows import ResultRow
from bench_core.store import CellIdentity, ResultsStore
from bench_core.suite import Suite
from bench_core.torchutil import resolve_device
from bench_core.trainer import TrainingDiverged

__all__ = ["Console", "Runner", "plan"]

SUMMARY_METRICS = 2
"""How many headline metrics the console line after each cell shows (per task)."""

Outcome = tuple[str, str | None, dict[str, Any], list[ResultRow]]
"""A cell's status (done, failed, skipped), reason, details and rows."""


@dataclass(frozen=True)
class Console:
    """How a run talks to its user: progress bars while training, and one line per cell through ``log``."""

    progress: bool = True
    log: Callable[[str], None] = print


class Runner:
    """Runs the cells of one suite against one results store.

    ``output_dir`` defaults to the suite's; ``argv`` is the command line recorded with the run.
    """

    def __init__(
        self,
        suite: Suite,
        registry: Registry,
        *,
        output_dir: Path | None = None,
        argv: list[str] | None = None,
        console: Console = Console(),
    ) -> None:
        self.suite = suite
        self.registry = registry
        self.output_dir = Path(output_dir or suite.resolved_output_dir)
        self.argv = argv or []
        self.console = console
        self.log = console.log
        self.datasets = Datasets(registry)

    def preflight(self, cells: list[Cell]) -> None:
        """Check everything that can be checked before any work (:func:`bench_core.preflight.preflight`)."""
        preflight(self.suite, self.registry, self.datasets, cells)

    def cell_key(self, cell: Cell | BaselineCell) -> str:
        """The results-store key of ``cell`` (:func:`bench_core.cells.cell_key`)."""
        return cell_key(self.suite, self.registry, self.datasets, cell)

    def baseline_cells(self, cells: list[Cell]) -> list[BaselineCell]:
        """The baseline cells that go with ``cells`` (:func:`bench_core.cells.baseline_cells`)."""
        return baseline_cells(self.registry, self.datasets, cells)

    def run(self, cells: list[Cell]) -> dict[str, int]:
        """Run ``cells`` and their baselines; return counts by status (done, failed, skipped, cached, busy).

        Under torchrun every rank trains each cell; rank 0 alone claims cells, evaluates,
        and writes files and rows, and broadcasts its decisions to the others.
        """
        self.preflight(cells)
        device = ddp.init_from_env(self.suite.device) or resolve_device(self.suite.device)
        run = RunContext(self.suite, self.registry, self.datasets, self.output_dir, device, ddp.is_main(),
                         self.console.progress, self.log)  # fmt: skip
        run_id = ddp.decide(lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
        env = {**environment(str(device), self.suite.source_path), "world_size": ddp.world_size()}
        store = self._open_store(run_id, env) if run.main else None
        summary = {"done": 0, "failed": 0, "skipped": 0, "cached": 0, "busy": 0}
        try:
            if store is not None:
                everything = plan(self.suite)
                current = [self.cell_key(c) for c in [*self.baseline_cells(everything), *everything]]
                store.record_plan(self.suite.name, run_id, current)
            for cell in [*self.baseline_cells(cells), *cells]:
                summary[self._run_one(run, store, run_id, cell, env)] += 1
        finally:
            if store is not None:
                store.finish_run(run_id)
                out = str(self.output_dir)
                self.registry.notify("bench_run_end", suite=self.suite, output_dir=out, summary=summary)
                store.close()
        return summary

    def _open_store(self, run_id: str, env: dict[str, Any]) -> ResultsStore:
        """Rank 0: the results store with this run started, the suite file beside it, the run-start hook called."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # A job of `bench run --executor local|slurm` writes a store of its own (bench_core.executors).
        store = ResultsStore(os.environ.get("BENCH_STORE_FILE") or self.output_dir)
        store.start_run(run_id, self.suite.name, self.suite.source_hash, self.argv, env)
        source = self.suite.source_path
        write_atomic(self.output_dir / "suite.yaml", source.read_text() if source else "")
        self.registry.notify("bench_run_start", suite=self.suite, output_dir=str(self.output_dir))
        return store

    def _run_one(
        self, run: RunContext, store: ResultsStore | None, run_id: str, cell: Cell | BaselineCell, env: dict
    ) -> str:
        """Claim, run and record one cell; return what became of it (a key of the run's summary)."""
        key = self.cell_key(cell)
        identity = CellIdentity(key, self.suite.name, cell.label, cell.dataset.label, cell.seed, cell.kind)
        claim = ddp.decide(lambda: store.claim_cell(identity, run_id))  # type: ignore[union-attr]
        if claim == "done":
            self.log(f"= {cell.id}: finished in an earlier run (kept)")
            return "cached"
        if claim == "busy":
            holder = store.holder(key) if store is not None else "another process"
            self.log(f"~ {cell.id}: left undone, run by {holder}")
            return "busy"
        with store.heartbeat(key) if store is not None else contextlib.nullcontext():
            status, reason, details, rows = self._run_cell(run, cell, env)
        ddp.barrier()  # the other ranks wait while rank 0 evaluates
        if store is not None:
            for row in store.finish_cell(key, status, reason, details, rows):
                self.registry.notify("bench_result_written", row=row.as_dict())
            self.log(_cell_line(cell, status, reason, rows))
        return status

    def _run_cell(self, run: RunContext, cell: Cell | BaselineCell, env: dict[str, Any]) -> Outcome:
        """Run one cell through its pipeline; a raising cell becomes a failed one (a skipped one when incompatible)."""
        started = time.time()
        try:
            if isinstance(cell, BaselineCell):
                rows, details = run_baseline_cell(run, cell)
            else:
                rows, details = run_model_cell(run, cell)
        except SkipCell as exc:
            return "skipped", str(exc), {}, []
        except TrainingDiverged as exc:  # decided on all ranks at once, so it is safe to record
            return "failed", _short(str(exc)), {"error": str(exc)}, []
        except Exception:
            # Under torchrun an error on one rank would leave the others blocked in a collective:
            # crash this rank instead, so torchrun stops them all; the cell is retried on re-run.
            if ddp.world_size() > 1:
                raise
            return _failure()
        details["seconds"] = time.time() - started
        rows = [row.with_provenance(suite_hash=self.suite.source_hash, git=env["git"], packages=env["packages"],
                                    device=env["device"]) for row in rows]  # fmt: skip
        failed = details.get("failed_tasks")  # a task that failed alone: the cell is done with the rest
        reason = "failed tasks: " + "; ".join(f"{k}: {v}" for k, v in failed.items()) if failed else None
        return "done", _short(reason) if reason else None, details, rows


def _failure() -> Outcome:
    """The failed-cell record of the exception being handled."""
    exc = sys.exc_info()[1]
    if isinstance(exc, BenchError):
        return "failed", _short(str(exc)), {"error": str(exc)}, []
    tb = traceback.format_exc()
    return "failed", _short(f"{type(exc).__name__}: {exc}"), {"error": str(exc), "traceback": tb}, []


def _short(message: str, limit: int = 300) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _cell_line(cell: Cell | BaselineCell, status: str, reason: str | None, rows: list[ResultRow]) -> str:
    mark = {"done": "✓", "failed": "✗", "skipped": "-"}.get(status, "?")
    if status != "done":
        return f"{mark} {cell.id}: {status}: {reason}"
    # The suite's first headline metrics, whatever they are (rows come in the suite's metric order).
    metric_rows = [r for r in rows if r.kind in ("metric", "baseline") and r.value is not None]
    names = list(dict.fromkeys(r.metric for r in metric_rows if row_reading(r.provenance, r.higher_is_better).headline))
    shown = [f"{r.task}.{r.metric}={r.value:.4g}" for r in metric_rows if r.metric in names[:SUMMARY_METRICS]]
    partial = f" ({reason})" if reason else ""  # a done cell's reason names the tasks that failed alone
    return f"{mark} {cell.id}: done {' '.join(shown)}{partial}"
