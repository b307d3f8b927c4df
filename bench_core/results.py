"""The read model beside the store: what one suite's stored results say, read in one go.

The report, ``bench export`` and ``bench compare`` read results through this module only:
runs, typed result rows (:class:`bench_core.rows.ResultRow`), cells, each finished cell's
``eval.json`` (per-item values), the rows of the suite as it is now (superseded cells left
out or relabelled), and the provenance a page shows. The store is read once (four queries)
and each cell's ``eval.json`` once; everything else is computed in memory.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.jsonvalues import decode_nonfinite
from bench_core.rows import ResultRow
from bench_core.store import STORE_NAME, ResultsStore

THROUGHPUT_SUFFIX = "images_per_s"
SUITE_COPY = "suite.yaml"
"""The copy of the suite file that ``bench run`` keeps beside the store."""
logger = logging.getLogger(__name__)


@dataclass
class StoredResults:
    """Everything a report (or an export, or a comparison) needs, read from one store in one go."""

    output_dir: Path
    suite: str
    runs: list[dict[str, Any]]
    results: list[ResultRow]
    cells: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell_key -> parsed eval.json
    per_item: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)  # item id -> value
    by_cell: dict[str, list[ResultRow]] = field(default_factory=dict)  # cell_key -> its result rows
    superseded: int = 0  # cells of earlier versions of the suite, left out of (or relabelled in) the data
    metric_order: list[str] = field(default_factory=list)  # the suite's metrics as its suite.yaml lists them
    suite_text: str = ""  # the suite file copied beside the store ("" when missing or unreadable)
    description: str = ""  # that file's description

    def metric_rank(self, metric: str) -> int:
        """Where ``metric`` (or the metric a component ``name.part`` belongs to) sits in the suite's list."""
        base = metric.partition(".")[0]
        return self.metric_order.index(base) if base in self.metric_order else len(self.metric_order)


def load_results(path: str | Path, suite: str | None = None, everything: bool = False) -> StoredResults:
    """Read runs, results and cells of ``suite`` (default: the latest run's) and the cells' eval.json.

    Only the cells of the suite as it was last run are read: a cell of an earlier version
    of the suite (other settings, data or code: another cell key) is superseded, counted in
    ``superseded`` and left out, so tables never mix two versions of a cell as two seeds.

    Args:
        path: an output directory holding ``results.sqlite``, or the ``.sqlite`` file itself.
        suite: which suite of the store; a store shared by several suites holds them all.
        everything: keep superseded cells too, each labelled ``model (superseded, run RUN)``
            so that they sit in rows of their own.
    """
    data, current = _read_store(Path(path), suite)
    _drop_superseded(data, current, everything)
    for row in data.results:
        data.by_cell.setdefault(row.cell_key, []).append(row)
    for cell in data.cells:
        _read_eval(data, cell)
    _read_suite_copy(data)
    return data


def _read_suite_copy(data: StoredResults) -> None:
    """The suite file copied beside the store: its text, description and metric order (read once)."""
    import yaml

    path = data.output_dir / SUITE_COPY
    try:
        data.suite_text = path.read_text() if path.exists() else ""
        suite = yaml.safe_load(data.suite_text)
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: bad UTF-8
        return
    if not isinstance(suite, dict):
        return
    data.description = str(suite.get("description") or "")
    metrics = suite.get("metrics")
    entries = metrics if isinstance(metrics, list) else []
    names = (m if isinstance(m, str) else str(m.get("plugin")) for m in entries if isinstance(m, str | dict))
    data.metric_order = list(names)


def all_rows(output_dir: Path) -> list[dict[str, Any]]:
    """Every row of the store in ``output_dir``, of every suite and run, as the store's columns.

    Two columns are added: ``current`` (the row's cell is in its suite's latest plan, i.e. what
    tables show; ``False`` for rows of superseded cells) and ``cell_status`` (its cell's status).
    """
    store = ResultsStore(output_dir)
    try:
        rows = store.results()
        status = {c["cell_key"]: c["status"] for c in store.cells()}
        plans = {suite: store.plan_keys(suite) for suite in {r.suite for r in rows}}
    finally:
        store.close()
    out = []
    for row in rows:
        plan = plans[row.suite]
        out.append({**row.as_dict(), "current": plan is None or row.cell_key in plan,
                    "cell_status": status.get(row.cell_key)})  # fmt: skip
    return out


def _read_store(path: Path, suite: str | None) -> tuple[StoredResults, set[str] | None]:
    """The suite's runs, rows and cells, and the cell keys of its latest plan (``None`` before plans)."""
    output_dir = path.parent if path.suffix == ".sqlite" else path
    if not (output_dir / STORE_NAME).exists() and path.suffix != ".sqlite":
        raise BenchError(f"no results store ({STORE_NAME}) in {output_dir}")
    store = ResultsStore(path)
    try:
        all_runs = store.runs()
        suite = suite or (all_runs[-1]["suite"] if all_runs else output_dir.name)
        runs = [r for r in all_runs if r["suite"] == suite]
        data = StoredResults(output_dir, suite, runs, store.results(suite), store.cells(suite))
        return data, store.plan_keys(suite)
    finally:
        store.close()


def _drop_superseded(data: StoredResults, current: set[str] | None, everything: bool) -> None:
    """Leave out (or, with ``everything``, relabel) the cells that are not in the suite's latest plan."""
    old = {c["cell_key"]: c["run_id"] for c in data.cells if current is not None and c["cell_key"] not in current}
    data.superseded = len(old)
    if not everything:
        data.cells = [c for c in data.cells if c["cell_key"] not in old]
        data.results = [r for r in data.results if r.cell_key not in old]
        return
    for cell in data.cells:
        if cell["cell_key"] in old:
            cell["model"] = f"{cell['model']} (superseded, run {old[cell['cell_key']]})"
    data.results = [r.replace(model=f"{r.model} (superseded, run {old[r.cell_key]})") if r.cell_key in old else r
                    for r in data.results]  # fmt: skip


def _read_eval(data: StoredResults, cell: dict[str, Any]) -> None:
    """Read a finished cell's eval.json into ``data.evals`` and ``data.per_item`` (a damaged one is skipped)."""
    cell_dir = cell["details"].get("cell_dir")
    eval_path = data.output_dir / cell_dir / "eval.json" if cell_dir else None
    if cell["status"] != "done" or eval_path is None or not eval_path.exists():
        return
    try:
        parsed = parse_eval_json(eval_path.read_text())
        problem = eval_json_problem(parsed)
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        problem = str(exc)
    if problem:  # a damaged eval.json costs the per-item intervals and galleries, not the report
        logger.warning("warning: %s is damaged (%s); the report goes on without its per-item values",
                       eval_path, problem)  # fmt: skip
        return
    data.evals[cell["cell_key"]] = parsed
    for task, metrics in parsed.items():
        for metric, entry in metrics.items():
            values = entry.get("per_file") if isinstance(entry, dict) else None
            if values:
                data.per_item[(cell["cell_key"], task, metric)] = {k: values[k] for k in sorted(values)}


def parse_eval_json(text: str) -> Any:
    """An eval.json's content, its non-finite numbers (written as ``"nan"``, ``"inf"``, ``"-inf"``) as floats.

    Only the numeric fields are decoded (each entry's ``mean``, ``std`` and ``per_file`` values), so an
    item whose id is ``"nan"`` stays a string; files written with Python's ``NaN`` tokens read too.
    """
    parsed = json.loads(text)
    for metrics in parsed.values() if isinstance(parsed, dict) else ():
        for entry in metrics.values() if isinstance(metrics, dict) else ():
            if not isinstance(entry, dict):
                continue
            entry.update({k: decode_nonfinite(entry[k]) for k in ("mean", "std") if k in entry})
            if isinstance(entry.get("per_file"), dict):
                entry["per_file"] = {k: decode_nonfinite(v) for k, v in entry["per_file"].items()}
    return parsed


def eval_json_problem(parsed: Any) -> str | None:
    """Why ``parsed`` is not shaped like an eval.json (``{task: {metric: {"per_file": {id: number}}}}``), or None."""
    if not isinstance(parsed, dict):
        return f"a JSON {type(parsed).__name__}, expected an object of tasks"
    for task, metrics in parsed.items():
        if not isinstance(metrics, dict):
            return f"task {task!r} is a JSON {type(metrics).__name__}, expected an object of metrics"
        for metric, entry in metrics.items():
            per_file = entry.get("per_file") if isinstance(entry, dict) else None
            numbers = isinstance(per_file, dict) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in per_file.values()
            )
            if per_file is not None and not numbers:
                return f"{task}.{metric}.per_file is not an object of numbers"
    return None


# -- provenance ---------------------------------------------------------------------------------
def provenance_context(data: StoredResults, cell: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs (git, packages, device), suite hash, metric settings, timing protocols and clamp counts.

    With ``cell``, only that cell's run and rows; otherwise the whole suite.
    """
    results = data.results if cell is None else data.by_cell.get(cell["cell_key"], [])
    run_ids = {r.run_id for r in results} | ({cell["run_id"]} if cell else {c["run_id"] for c in data.cells})
    runs = [r for r in data.runs if r["run_id"] in run_ids] or ([] if cell else data.runs)
    metric_settings, timing = _settings_in_use(results)
    # Every metric row of a task repeats the task's clamp counters: count each (cell, task) once.
    counters = {
        (r.cell_key, r.task): (int(r.counters["pred_clamped"]), int(r.counters.get("pred_values") or 0))
        for r in results
        if r.counters.get("pred_clamped") is not None
    }
    return {
        "runs": [_run_view(r) for r in runs],
        "suite_hashes": sorted({r["suite_hash"] for r in runs}),
        "metric_settings": {m: metric_settings[m] for m in sorted(metric_settings)},
        "timing": [(json.loads(k), v) for k, v in sorted(timing.items())],
        "clamped": [sum(c for c, _ in counters.values()), sum(v for _, v in counters.values())],
    }


def _settings_in_use(results: list[ResultRow]) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """Per metric, each settings variant (as JSON) with where it was used; the same for timing protocols."""
    metric_settings: dict[str, dict[str, list[str]]] = defaultdict(dict)
    timing: dict[str, list[str]] = {}
    for r in results:
        text = json.dumps(r.settings, sort_keys=True, default=str)
        where = f"{r.dataset}/{r.task}"
        users = timing.setdefault(text, []) if r.metric.endswith(THROUGHPUT_SUFFIX) else None
        if users is None:
            users = metric_settings[r.metric].setdefault(text, [])
        if where not in users:
            users.append(where)
    return metric_settings, timing


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    prov = run["provenance"]
    git = prov.get("git") or {}
    hardware = {k: prov[k] for k in ("device", "gpu", "gpu_memory_gb", "cuda", "cudnn") if prov.get(k) is not None}
    host = {k: prov[k] for k in ("python", "platform", "cpu", "torch_threads") if prov.get(k) is not None}
    return {
        "run_id": run["run_id"],
        "started": run["started"],
        "finished": run["finished"],
        "suite_hash": run["suite_hash"],
        "argv": " ".join(json.loads(run["argv"] or "[]")),
        "commit": git.get("commit") or "not a git checkout",
        "dirty": {True: "dirty", False: "clean"}.get(git.get("dirty"), "unknown"),
        "hardware": hardware,
        "host": host,
        "packages": prov.get("packages") or {},
    }
