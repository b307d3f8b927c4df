"""The HTML report: rebuilt from the results store alone (``bench report OUTPUT_DIR``).

Static and self-contained: inline CSS and JS, images referenced relative to the page, so
it opens from ``file://`` with no network. Rendered with autoescaping on. The data comes
from the read model (:mod:`bench_core.results`: the store read once, each cell's
``eval.json`` once) and the tables (:mod:`bench_core.tables`); everything else is computed
in memory, so a report over hundreds of cells stays fast.

Pages: ``index.html`` (leaderboards per dataset and task, failed and skipped cells, cell
list, speed, provenance) and ``cells/<slug>/index.html`` per finished cell (curves, image
grids, worst test items, the cell's own numbers and provenance). ``leaderboard.json`` is
the machine-readable twin of the leaderboard tables.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench_core.api import BenchError
from bench_core.fileio import write_atomic
from bench_core.jsonvalues import dumps
from bench_core.metric_reading import row_reading
from bench_core.report.closest import closest_pairs
from bench_core.report.jinja import engine_version, environment
from bench_core.report.plots import dataset_plots
from bench_core.report.readable import settings_line
from bench_core.report.strip import build_strips
from bench_core.results import StoredResults, load_results, provenance_context
from bench_core.tables import Aggregate, Table, aggregate, arrow, build_tables, task_rank

_WIDTH, _HEIGHT = 420, 130
WORST_N = 8
BENCHMARKS_NAME = "benchmarks.json"
STRIPS_DIR = "strips"


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
        everything: show superseded cells too (in rows of their own), see :func:`bench_core.results.load_results`.
    """
    output_dir = Path(output_dir)
    data = load_results(output_dir, everything=everything)
    speed = _speed(output_dir, benchmarks)
    tables = build_tables(data.results, data.per_item, data.metric_rank)
    env = environment()
    cell_pages = _cell_pages(data)
    common = {"suite": data.suite, "provenance": provenance_context(data), "version": engine_version(), "arrow": arrow}
    strip_pages = _write_strips(env, common, data, tables)
    page = env.get_template("index.html").render(
        **common,
        **_index_context(data, tables, cell_pages),
        root="",
        description=data.description,
        suite_text=data.suite_text,
        cells=data.cells,
        cell_pages=cell_pages,
        strip_pages=strip_pages,
        descriptions=_descriptions(data),
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
        context["closest"] = closest_pairs(data.evals.get(c["cell_key"], {}), output_dir / info["dir"])
        html = env.get_template("cell.html").render(
            **common, root="../" * info["depth"], cell=c, provenance_runs=provenance_context(data, c),
            strip=strip_pages.get(c["dataset"]), **context,
        )
        write_atomic(output_dir / info["dir"] / "index.html", html, durable=False)
    # Strict JSON: NaN and infinities as "nan", "inf", "-inf" (bench_core.jsonvalues, docs/outputs.md).
    write_atomic(output_dir / "leaderboard.json", dumps(tables_json(tables), indent=1, sort_keys=True))
    return index


def _write_strips(env: Any, common: dict[str, Any], data: StoredResults, tables: list[Table]) -> dict[str, str]:
    """Write ``strips/<n>-<dataset>.html`` per dataset with kept strip items; return dataset -> href."""
    hrefs = {}
    for n, (dataset, strips) in enumerate(build_strips(data, tables).items(), start=1):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
        hrefs[dataset] = f"{STRIPS_DIR}/{n}-{safe}.html"  # the number keeps two labels that sanitise alike apart
        html = env.get_template("strip.html").render(**common, root="../", dataset=dataset, strips=strips)
        write_atomic(data.output_dir / hrefs[dataset], html, durable=False)
    return hrefs


def _speed(output_dir: Path, benchmarks: Path | None) -> dict[str, Any] | None:
    """The speed section: from ``benchmarks`` (kept beside the report for later rebuilds), else the kept copy."""
    kept = output_dir / BENCHMARKS_NAME
    if benchmarks is None:
        return load_benchmarks(kept) if kept.exists() else None
    speed = load_benchmarks(benchmarks)  # validate before replacing an earlier copy
    if Path(benchmarks).resolve() != kept.resolve():
        write_atomic(kept, Path(benchmarks).read_bytes())
    return speed


def _index_context(data: StoredResults, tables: list[Table], cell_pages: dict[str, dict]) -> dict[str, Any]:
    """The index page's tables and problem cells by dataset, links to cell pages, and counts by status."""
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
    return {"datasets": by_dataset, "links": links, "summary": summary, "plots": dataset_plots(data, tables)}


def _descriptions(data: StoredResults) -> dict[str, str]:
    """Metric name -> the one line its plugin reads as (for the leaderboards' column headers)."""
    return {r.metric: text for r in data.results if (text := row_reading(r.provenance, r.higher_is_better).description)}


def _cell_title(cell: dict[str, Any]) -> str:
    return f"{cell['model']} / {cell['dataset']} / seed{cell['seed']}"


def _cell_pages(data: StoredResults) -> dict[str, dict[str, Any]]:
    """cell_key -> where its detail page goes, for every finished cell that has a folder."""
    pages = {}
    for c in data.cells:
        cell_dir = c["details"].get("cell_dir")
        if c["status"] != "done" or not cell_dir:
            continue
        depth = len(Path(cell_dir).parts)
        pages[c["cell_key"]] = {"dir": cell_dir, "href": f"{Path(cell_dir).as_posix()}/index.html", "depth": depth}
    return pages


# -- cell pages ---------------------------------------------------------------------------------
def _cell_context(cell: dict[str, Any], data: StoredResults, depth: int) -> dict[str, Any]:
    details = cell["details"]
    rows = data.by_cell.get(cell["cell_key"], [])
    cell_dir = data.output_dir / details["cell_dir"]
    spec = details.get("spec") or {}
    numbers = []
    for r in rows:
        agg = aggregate([r], data.per_item)
        reading = row_reading(r.provenance, r.higher_is_better)
        # The cell's own numbers show what each was computed with and on: settings and counters together.
        numbers.append({"task": r.task, "metric": r.metric, "higher": r.higher_is_better, "agg": agg,
                        "settings": {**r.settings, **r.counters}, "line": settings_line(r.settings),
                        "description": reading.description,
                        "headline": reading.headline and r.kind in ("metric", "baseline")})  # fmt: skip
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
    headline = {r.metric for r in rows if row_reading(r.provenance, r.higher_is_better).headline}
    galleries = _worst_items(data.evals.get(cell["cell_key"], {}), directions, headline, spec, cell_dir)
    # As the leaderboard orders them: reconstruction/translation tasks first, the suite's metric order within.
    numbers.sort(key=lambda x: (task_rank(x["task"]), x["task"], data.metric_rank(x["metric"]), x["metric"]))
    shown_first = [x for x in numbers if x["headline"]]
    return {"numbers": numbers, "headline": shown_first, "curves": curves, "grids": grids, "galleries": galleries,
            "spec": spec}  # fmt: skip


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
    evaluation: dict[str, Any], directions: dict[tuple[str, str], bool | None], headline: set[str],
    spec: dict[str, Any], cell_dir: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per task, the WORST_N test items by its first headline metric with per-item values (else first ranked)."""
    galleries = []
    for task, metrics in evaluation.items():
        candidates = [m for m, e in metrics.items() if isinstance(e, dict) and e.get("per_file")]
        candidates = [m for m in candidates if directions.get((task, m)) is not None]
        if not candidates:
            continue
        metric = next((m for m in candidates if m in headline), candidates[0])  # eval.json keeps the suite's order
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
            "test": None if agg.test is None else {"over": agg.test.over, "n": agg.test.n, "p": agg.test.p,
                                                   "p_holm": agg.test.p_holm, "text": agg.test.text()},
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
            "paired_tests": t.tests,
        }
        for t in tables
    ]
