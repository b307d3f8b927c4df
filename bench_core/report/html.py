"""The HTML report: rebuilt from the results store alone (``bench report OUTPUT_DIR``).

Static and self-contained: inline CSS and JS, images referenced relative to the page, so
it opens from ``file://`` with no network. Rendered with autoescaping on. The store is
read once (three queries) and each cell's ``eval.json`` once; everything else is
computed in memory, so a report over hundreds of cells stays fast.

Pages: ``index.html`` (leaderboards per dataset and task, failed and skipped cells, cell
list, speed, provenance) and ``cells/<slug>/index.html`` per finished cell (curves, image
grids, worst test items, the cell's own numbers and provenance). ``leaderboard.json`` is
the machine-readable twin of the leaderboard tables.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.fileio import write_atomic
from bench_core.rows import ResultRow
from bench_core.store import STORE_NAME, ResultsStore
from bench_core.tables import Aggregate, Table, aggregate, arrow, build_tables

_WIDTH, _HEIGHT = 420, 130
WORST_N = 8
BENCHMARKS_NAME = "benchmarks.json"
_THROUGHPUT_SUFFIX = "images_per_s"
logger = logging.getLogger(__name__)


@dataclass
class ReportData:
    """Everything a report (or a comparison) needs, read from one store in one go."""

    output_dir: Path
    suite: str
    runs: list[dict[str, Any]]
    results: list[ResultRow]
    cells: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell_key -> parsed eval.json
    per_item: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    by_cell: dict[str, list[ResultRow]] = field(default_factory=dict)  # cell_key -> its result rows
    superseded: int = 0  # cells of earlier versions of the suite, left out of (or relabelled in) the data


def load_report_data(path: str | Path, suite: str | None = None, everything: bool = False) -> ReportData:
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
    path = Path(path)
    output_dir = path.parent if path.suffix == ".sqlite" else path
    if not (output_dir / STORE_NAME).exists() and path.suffix != ".sqlite":
        raise BenchError(f"no results store ({STORE_NAME}) in {output_dir}")
    store = ResultsStore(path)
    try:
        all_runs = store.runs()
        suite = suite or (all_runs[-1]["suite"] if all_runs else output_dir.name)
        results = store.results(suite)
        cells = store.cells(suite)
        current = store.plan_keys(suite)
    finally:
        store.close()
    old = {c["cell_key"]: c["run_id"] for c in cells if current is not None and c["cell_key"] not in current}
    if everything:
        for cell in cells:
            if cell["cell_key"] in old:
                cell["model"] = f"{cell['model']} (superseded, run {old[cell['cell_key']]})"
        results = [r.replace(model=f"{r.model} (superseded, run {old[r.cell_key]})") if r.cell_key in old else r
                   for r in results]  # fmt: skip
    else:
        cells = [c for c in cells if c["cell_key"] not in old]
        results = [r for r in results if r.cell_key not in old]
    data = ReportData(output_dir, suite, [r for r in all_runs if r["suite"] == suite], results, cells)
    data.superseded = len(old)
    for row in results:
        data.by_cell.setdefault(row.cell_key, []).append(row)
    for cell in cells:
        cell_dir = cell["details"].get("cell_dir")
        eval_path = output_dir / cell_dir / "eval.json" if cell_dir else None
        if cell["status"] != "done" or eval_path is None or not eval_path.exists():
            continue
        try:
            parsed = json.loads(eval_path.read_text())
            problem = eval_json_problem(parsed)
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            problem = str(exc)
        if problem:  # a damaged eval.json costs the per-item intervals and galleries, not the report
            logger.warning("warning: %s is damaged (%s); the report goes on without its per-item values",
                           eval_path, problem)  # fmt: skip
            continue
        data.evals[cell["cell_key"]] = parsed
        for task, metrics in parsed.items():
            for metric, entry in metrics.items():
                values = entry.get("per_file") if isinstance(entry, dict) else None
                if values:
                    data.per_item[(cell["cell_key"], task, metric)] = [values[k] for k in sorted(values)]
    return data


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


def curve_svg(points: list[dict[str, float]], key: str = "loss") -> str:
    """An inline SVG line of ``key`` over steps (log-scaled when it spans decades), with its range."""
    pts = [(p["step"], p[key]) for p in points if isinstance(p.get(key), int | float) and math.isfinite(p[key])]
    if len(pts) < 2:
        return ""
    use_log = all(v > 0 for _, v in pts) and max(v for _, v in pts) / min(v for _, v in pts) > 20
    ys = [math.log10(v) if use_log else v for _, v in pts]
    x0, x1 = pts[0][0], pts[-1][0]
    y0, y1 = min(ys), max(ys)
    span_y = (y1 - y0) or 1.0
    left, top, bottom = 56, 8, 30
    coords = " ".join(
        f"{left + (s - x0) / ((x1 - x0) or 1) * (_WIDTH - left - 8):.1f},"
        f"{top + (y1 - y) / span_y * (_HEIGHT - top - bottom):.1f}"
        for (s, _), y in zip(pts, ys, strict=True)
    )
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    label = f"{key}{' (log scale)' if use_log else ''}: {pts[0][1]:.4g} → {pts[-1][1]:.4g}, steps {x0}–{x1}"
    axis_y = _HEIGHT - bottom
    return (
        f'<svg class="curve" width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{_xml_escape(label)}">'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#bbb"/>'
        f'<line x1="{left}" y1="{axis_y}" x2="{_WIDTH - 8}" y2="{axis_y}" stroke="#bbb"/>'
        f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end" fill="#555">{hi:.3g}</text>'
        f'<text x="{left - 4}" y="{axis_y}" font-size="10" text-anchor="end" fill="#555">{lo:.3g}</text>'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/>'
        f'<text x="{left}" y="{_HEIGHT - 8}" font-size="11" fill="#555">{_xml_escape(label)}</text></svg>'
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def build_report(
    output_dir: str | Path,
    extra_sections: list[dict[str, str]] | None = None,
    benchmarks: Path | None = None,
    everything: bool = False,
) -> Path:
    """Render ``<output_dir>/index.html`` and one page per finished cell from the store; return the index path.

    Args:
        extra_sections: ``{"title", "html"}`` sections from the ``bench_report_sections`` hook
            (their HTML is trusted and inserted as is).
        benchmarks: a pytest-benchmark JSON file; it is copied to ``<output_dir>/benchmarks.json``
            so later rebuilds keep the speed section.
        everything: show superseded cells too (in rows of their own), see :func:`load_report_data`.
    """
    output_dir = Path(output_dir)
    data = load_report_data(output_dir, everything=everything)
    kept = output_dir / BENCHMARKS_NAME
    if benchmarks is not None:
        speed = load_benchmarks(benchmarks)  # validate before replacing an earlier copy
        if Path(benchmarks).resolve() != kept.resolve():
            write_atomic(kept, Path(benchmarks).read_bytes())
    else:
        speed = load_benchmarks(kept) if kept.exists() else None
    tables = build_tables(data.results, data.per_item)
    env = _environment()
    provenance = provenance_context(data)
    cell_pages = _cell_pages(data)
    common = {"suite": data.suite, "provenance": provenance, "version": _version(), "arrow": arrow}

    by_dataset: dict[str, dict[str, Any]] = {}
    for name in sorted({t.dataset for t in tables} | {c["dataset"] for c in data.cells}):
        by_dataset[name] = {"tables": [], "problems": []}
    for t in tables:
        by_dataset[t.dataset]["tables"].append(t)
    for c in data.cells:
        if c["status"] in ("failed", "skipped"):
            by_dataset[c["dataset"]]["problems"].append(c)
    links: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for c in data.cells:
        if c["cell_key"] in cell_pages:
            links[(c["model"], c["dataset"])].append((c["seed"], cell_pages[c["cell_key"]]["href"]))
    summary = {"done": 0, "failed": 0, "skipped": 0, "running": 0}
    for c in data.cells:
        summary[c["status"]] = summary.get(c["status"], 0) + 1
    suite_text = _read(output_dir / "suite.yaml")
    page = env.get_template("index.html").render(
        **common,
        root="",
        description=_description(suite_text),
        suite_text=suite_text,
        summary=summary,
        datasets=by_dataset,
        links=links,
        cells=data.cells,
        cell_pages=cell_pages,
        sections=extra_sections or [],
        speed=speed,
        cell_title=_cell_title,
        superseded=0 if everything else data.superseded,
    )
    index = output_dir / "index.html"
    write_atomic(index, page, durable=False)  # rebuilt from the store by every report: no fsync per page
    for c in data.cells:
        info = cell_pages.get(c["cell_key"])
        if info is None:
            continue
        context = _cell_context(c, data, info["depth"])
        context["flags"] = [f"{t.task}: {flag}" for t in tables if t.dataset == c["dataset"]
                            for flag in t.flags.get(c["model"], [])]  # fmt: skip
        html = env.get_template("cell.html").render(
            **common, root="../" * info["depth"], cell=c, provenance_runs=provenance_context(data, c), **context
        )
        write_atomic(output_dir / info["dir"] / "index.html", html, durable=False)
    write_atomic(output_dir / "leaderboard.json", json.dumps(tables_json(tables), indent=1, sort_keys=True))
    return index


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    # StrictUndefined: a typo in a template fails the build instead of printing nothing.
    env = Environment(
        loader=PackageLoader("bench_core", "report/templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = lambda v: json.dumps(v, sort_keys=True, default=str)
    env.filters["when"] = _when
    env.globals["zip"] = zip
    return env


def _version() -> str:
    from bench_core import __version__

    return __version__


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "–"
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell_title(cell: dict[str, Any]) -> str:
    return f"{cell['model']} / {cell['dataset']} / seed{cell['seed']}"


def _cell_pages(data: ReportData) -> dict[str, dict[str, Any]]:
    """cell_key -> where its detail page goes, for every finished cell that has a folder."""
    pages = {}
    for c in data.cells:
        cell_dir = c["details"].get("cell_dir")
        if c["status"] != "done" or not cell_dir:
            continue
        depth = len(Path(cell_dir).parts)
        pages[c["cell_key"]] = {"dir": cell_dir, "href": f"{Path(cell_dir).as_posix()}/index.html", "depth": depth}
    return pages


# -- provenance ---------------------------------------------------------------------------------
def provenance_context(data: ReportData, cell: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs (git, packages, device), suite hash, metric settings and timing protocols for a page.

    With ``cell``, only that cell's run and rows; otherwise the whole suite.
    """
    results = data.results if cell is None else data.by_cell.get(cell["cell_key"], [])
    run_ids = {r.run_id for r in results} | ({cell["run_id"]} if cell else {c["run_id"] for c in data.cells})
    runs = [r for r in data.runs if r["run_id"] in run_ids] or ([] if cell else data.runs)
    metric_settings: dict[str, dict[str, list[str]]] = defaultdict(dict)
    timing: dict[str, list[str]] = {}
    for r in results:
        text = json.dumps(r.settings, sort_keys=True, default=str)
        where = f"{r.dataset}/{r.task}"
        if r.metric.endswith(_THROUGHPUT_SUFFIX):
            timing.setdefault(text, [])
            if where not in timing[text]:
                timing[text].append(where)
            continue
        users = metric_settings[r.metric].setdefault(text, [])
        if where not in users:
            users.append(where)
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


# -- cell pages ---------------------------------------------------------------------------------
def _cell_context(cell: dict[str, Any], data: ReportData, depth: int) -> dict[str, Any]:
    details = cell["details"]
    rows = data.by_cell.get(cell["cell_key"], [])
    cell_dir = data.output_dir / details["cell_dir"]
    spec = details.get("spec") or {}
    numbers = []
    for r in rows:
        agg = aggregate([r], data.per_item)
        # The cell's own numbers show what each was computed with and on: settings and counters together.
        numbers.append({"task": r.task, "metric": r.metric, "higher": r.higher_is_better, "agg": agg,
                        "settings": {**r.settings, **r.counters}})  # fmt: skip
    curves = []
    for stage in details.get("stages", []):
        keys = sorted({k for p in stage.get("curve", []) for k in p if k != "step"}, key=lambda k: (k != "loss", k))
        svgs = [svg for k in keys if (svg := curve_svg(stage["curve"], k))]
        # Defaults for fields that older stores (or other engines) may not have written.
        view = {"stage": "?", "steps": 0, "skipped": 0, "seconds": 0.0, "images_per_second": None, "resumed_from": 0}
        view.update({k: v for k, v in stage.items() if k in view and v is not None})
        curves.append({"stage": view, "svgs": svgs})
    grids = [
        {"task": task, "src": name, "caption": _grid_caption(task, spec), "exists": (cell_dir / name).exists()}
        for task, name in details.get("grids", {}).items()
    ]
    directions = {(r.task, r.metric): r.higher_is_better for r in rows}
    galleries = _worst_items(data.evals.get(cell["cell_key"], {}), directions, spec, cell_dir)
    return {"numbers": numbers, "curves": curves, "grids": grids, "galleries": galleries, "spec": spec}


def _task_modalities(task: str, spec: dict[str, Any]) -> tuple[str | None, str | None]:
    """(source, target) modality of a task name like ``A2B`` on paired data; (None, None) otherwise."""
    modalities = spec.get("modalities") or []
    if len(modalities) == 2 and "2" in task:
        src, _, tgt = task.partition("2")
        if src in modalities and tgt in modalities:
            return src, tgt
    return None, None


def _grid_caption(task: str, spec: dict[str, Any]) -> str:
    if task == "sample":
        rows = "samples (one per column)"
    else:
        src, tgt = _task_modalities(task, spec)
        rows = "ground truth | prediction | |error|"
        if src is not None and src != tgt:
            rows = f"input {src} | ground truth {tgt} | prediction | |error|"
    volumes = "; 3D volumes show their three orthogonal centre slices side by side" if spec.get("dims") == 3 else ""
    return f"{task}: rows are {rows}; columns are the first test items{volumes}"


def _worst_items(
    evaluation: dict[str, Any], directions: dict[tuple[str, str], bool | None], spec: dict[str, Any], cell_dir: Path
) -> list[dict[str, Any]]:
    """Per task, the WORST_N test items by SSIM (else the first paired metric with per-item values)."""
    galleries = []
    for task, metrics in evaluation.items():
        candidates = [m for m, e in metrics.items() if isinstance(e, dict) and e.get("per_file")]
        candidates = [m for m in candidates if directions.get((task, m)) is not None]
        if not candidates:
            continue
        metric = "ssim" if "ssim" in candidates else candidates[0]
        higher = directions[(task, metric)]
        per_file = metrics[metric]["per_file"]
        # Worst first; ties broken by id so the gallery is the same on every rebuild.
        order = sorted(per_file.items(), key=lambda kv: (kv[1] if higher else -kv[1], kv[0]))[:WORST_N]
        src, tgt = _task_modalities(task, spec)
        gt_folder = f"gt{tgt}" if tgt else "gt"
        items = []
        for item_id, value in order:
            name = f"{Path(item_id).name}.png"
            images = [("ground truth", f"{gt_folder}/{name}"), ("prediction", f"{task}/{name}")]
            if src is not None and src != tgt:
                images.insert(0, (f"input {src}", f"gt{src}/{name}"))
            shown = [(label, rel) for label, rel in images if (cell_dir / rel).exists()]
            items.append({"id": item_id, "value": value, "images": shown})
        galleries.append({"task": task, "metric": metric, "higher": higher, "worst": items, "n": len(per_file)})
    return galleries


# -- speed (pytest-benchmark) -------------------------------------------------------------------
def load_benchmarks(path: str | Path) -> dict[str, Any]:
    """Read a pytest-benchmark JSON file (``--benchmark-json``) into the report's speed section."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        benchmarks = raw["benchmarks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"{path}: not a pytest-benchmark JSON file ({exc})") from None
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in benchmarks:
        stats = b.get("stats") or {}
        if "mean" not in stats:
            raise BenchError(f"{path}: benchmark {b.get('name')!r} has no stats.mean")
        groups[b.get("group") or "(no group)"].append(
            {
                "name": b.get("name", "?"),
                "fullname": b.get("fullname", b.get("name", "?")),
                "mean": stats["mean"],
                "mean_text": _seconds(stats["mean"]),
                "stddev_text": _seconds(stats.get("stddev")),
                "min_text": _seconds(stats.get("min")),
                "median_text": _seconds(stats.get("median")),
                "rounds": stats.get("rounds"),
                "ops": stats.get("ops"),
                "extra": b.get("extra_info") or {},
            }
        )
    for rows in groups.values():
        rows.sort(key=lambda r: r["mean"])
    machine = raw.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    commit = raw.get("commit_info") or {}
    return {
        "file": path.name,
        "groups": dict(sorted(groups.items())),
        "machine": {
            "node": machine.get("node"),
            "cpu": cpu.get("brand_raw") or machine.get("processor") or machine.get("machine"),
            "cores": cpu.get("count"),
            "python": machine.get("python_version"),
            "system": " ".join(str(machine.get(k, "")) for k in ("system", "release")).strip(),
        },
        "commit": {"id": commit.get("id"), "dirty": commit.get("dirty"), "branch": commit.get("branch")},
        "datetime": raw.get("datetime"),
        "version": raw.get("version"),
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value / 1e-9:.4g} ns"


# -- machine-readable twin ----------------------------------------------------------------------
def tables_json(tables: list[Table]) -> list[dict[str, Any]]:
    """The leaderboard tables as plain data (``leaderboard.json``), with the exact displayed texts."""

    def cell(agg: Aggregate) -> dict[str, Any]:
        return {
            "mean": agg.sort_value, "spread": agg.spread, "spread_over": agg.spread_over, "n_seeds": agg.n_seeds,
            "n_items": agg.n_items, "values": agg.values, "seeds": agg.seeds, "ci95": list(agg.ci) if agg.ci else None,
            "ci_over": agg.ci_over, "best": agg.best, "tie": agg.tie, "settings": agg.settings,
            "text": agg.text(), "ci_text": agg.ci_text(), "below_baseline": agg.below_baseline,
        }  # fmt: skip

    return [
        {
            "dataset": t.dataset,
            "task": t.task,
            "metrics": [{"name": m, "higher_is_better": h} for m, h in t.metrics],
            "rows": {model: {m: cell(a) for m, a in aggs.items()} for model, aggs in t.rows.items()},
            "baselines": {name: {m: cell(a) for m, a in aggs.items()} for name, aggs in t.baselines.items()},
            "flags": t.flags,
            "not_ranked": {m: t.why[m] for m in t.incomparable},
        }
        for t in tables
    ]


def _description(suite_text: str) -> str:
    import yaml

    try:
        data = yaml.safe_load(suite_text) or {}
    except yaml.YAMLError:
        return ""
    return str(data.get("description", "")) if isinstance(data, dict) else ""
