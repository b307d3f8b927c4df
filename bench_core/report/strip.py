"""The comparison strip: the same test items side by side for every model of a dataset and task.

Columns are test items, rows are the input (translation), the ground truth, then every model's
output and every baseline's, all mapped to ``[0, 1]`` by the dataset's value range at evaluation
(one intensity window for the whole strip). The images are files the evaluator kept in each
cell folder, referenced relative to the page; the report never runs a model.

Which items: the ones every cell kept under ``strip/<task>/`` (chosen from the item ids alone,
:mod:`bench_core.images`), followed by the worst and the median test item of the best model by
the suite's first headline metric with per-item values, taken from the per-item images
(``<task>/<id>.png``) that cells write unless ``save_images`` is off (without them the two
columns are left out). A model that scored several seeds shows its lowest seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_core.images import STRIP_INDEX
from bench_core.metric_reading import row_reading
from bench_core.results import StoredResults
from bench_core.tables import Table, task_rank


@dataclass
class StripColumn:
    """One test item of a strip: its id, why it is there, and its picture per row label."""

    item_id: str
    why: str  # "" for the fixed items, else e.g. "worst of model-a by ssim"
    images: dict[str, str] = field(default_factory=dict)  # row label -> src relative to the report root
    values: dict[str, str] = field(default_factory=dict)  # model row label -> its per-item value, as text


@dataclass
class Strip:
    """The strip of one dataset and task."""

    dataset: str
    task: str
    rows: list[tuple[str, str, str]]  # (label shown, key of the column's images, kind: reference | model | baseline)
    columns: list[StripColumn]
    metric: str | None  # the per-item metric shown under the outputs
    seeds: dict[str, int]  # model row label -> the seed shown


def build_strips(data: StoredResults, tables: list[Table]) -> dict[str, list[Strip]]:
    """Per dataset, one strip per reconstruction or translation task whose cells kept strip items."""
    out: dict[str, list[Strip]] = {}
    headline = _headline_metrics(data)
    for table in sorted(tables, key=lambda t: (t.dataset, task_rank(t.task), t.task)):
        strip = _strip(data, table, headline)
        if strip is not None:
            out.setdefault(table.dataset, []).append(strip)
    return out


def _headline_metrics(data: StoredResults) -> set[str]:
    return {r.metric for r in data.results
            if r.kind in ("metric", "baseline") and row_reading(r.provenance, r.higher_is_better).headline}  # fmt: skip


def _shown_cells(data: StoredResults, dataset: str, task: str) -> dict[str, dict[str, Any]]:
    """Row label -> the cell shown (lowest seed of each model, then the baselines), for cells that kept strip items."""
    chosen: dict[str, dict[str, Any]] = {}
    for cell in sorted(data.cells, key=lambda c: (c["model"].startswith("baseline:"), c["model"], c["seed"])):
        cell_dir = cell["details"].get("cell_dir")
        if cell["dataset"] != dataset or cell["status"] != "done" or not cell_dir or cell["model"] in chosen:
            continue
        if (data.output_dir / cell_dir / "strip" / task / STRIP_INDEX).exists():
            chosen[cell["model"]] = cell
    return chosen


def _strip(data: StoredResults, table: Table, headline: set[str]) -> Strip | None:
    cells = _shown_cells(data, table.dataset, table.task)
    if not cells:
        return None
    first = next(iter(cells.values()))
    ids = _kept_ids(data.output_dir / first["details"]["cell_dir"] / "strip" / table.task)
    rows = [(label, label, "baseline" if label.startswith("baseline:") else "model") for label in cells]
    source, target = _modalities(table.task, first["details"].get("spec") or {})
    references = [("ground truth", "ground truth", "reference")]
    if source and source != target:
        references.insert(0, (f"input {source}", "input", "reference"))
    columns = [_kept_column(data, cells, table.task, item_id, first) for item_id in ids]
    metric, extra = _best_model_items(data, table, cells, headline)
    for item_id, why, best in extra:  # only where the best model's per-item image was saved
        column = _file_column(data, cells, table.task, item_id, why, source, target)
        columns += [column] if best in column.images else []
    if metric is not None:
        for column in columns:
            column.values = _item_values(data, cells, table.task, metric, column.item_id)
    seeds = {label: cell["seed"] for label, cell in cells.items()}
    return Strip(table.dataset, table.task, references + rows, columns, metric, seeds)


def _kept_ids(folder: Path) -> list[str]:
    try:
        ids = json.loads((folder / STRIP_INDEX).read_text())
    except (OSError, ValueError):
        return []
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def _modalities(task: str, spec: dict[str, Any]) -> tuple[str | None, str | None]:
    modalities = spec.get("modalities") or []
    src, _, tgt = task.partition("2")
    return (src, tgt) if len(modalities) == 2 and src in modalities and tgt in modalities else (None, None)


def _kept_column(
    data: StoredResults, cells: dict[str, dict[str, Any]], task: str, item_id: str, first: dict[str, Any]
) -> StripColumn:
    """A fixed item: input and ground truth from the first row's cell, each row's output from its own."""
    name = f"{Path(item_id).name}.png"
    base = f"{first['details']['cell_dir']}/strip/{task}"
    wanted = {"input": f"{base}/input/{name}", "ground truth": f"{base}/target/{name}"}
    wanted |= {label: f"{cell['details']['cell_dir']}/strip/{task}/output/{name}" for label, cell in cells.items()}
    # A cell evaluated on other test items (another max_items) did not keep this one: its picture stays empty.
    images = {key: rel for key, rel in wanted.items() if (data.output_dir / rel).exists()}
    return StripColumn(item_id, "", images)


def _best_model_items(
    data: StoredResults, table: Table, cells: dict[str, dict[str, Any]], headline: set[str]
) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The metric shown, and the worst and median items of the column's best model by it (when ranked)."""
    for metric, higher in sorted(table.metrics, key=lambda mh: data.metric_rank(mh[0])):  # the suite's order
        if metric not in headline or higher is None:
            continue
        best = next((m for m, aggs in table.rows.items() if (a := aggs.get(metric)) is not None and a.best), None)
        cell = cells.get(best) if best is not None else None
        per_file = _per_file(data, cell, table.task, metric) if cell is not None else None
        if not per_file:
            continue
        ranked = sorted(per_file.items(), key=lambda kv: (kv[1] if higher else -kv[1], kv[0]))  # worst first
        worst, median = ranked[0][0], ranked[(len(ranked) - 1) // 2][0]
        extra = [(worst, f"worst of {best} by {metric}", best)]
        if median != worst:
            extra.append((median, f"median of {best} by {metric}", best))
        return metric, extra
    return None, []


def _per_file(data: StoredResults, cell: dict[str, Any], task: str, metric: str) -> dict[str, float] | None:
    entry = data.evals.get(cell["cell_key"], {}).get(task, {}).get(metric)
    return entry.get("per_file") if isinstance(entry, dict) else None


def _file_column(
    data: StoredResults, cells: dict[str, dict[str, Any]], task: str, item_id: str, why: str,
    source: str | None, target: str | None,
) -> StripColumn:  # fmt: skip
    """An item chosen by value: every picture from the per-item images, where the cells wrote them."""
    name = f"{Path(item_id).name}.png"
    column = StripColumn(item_id, why)
    paired = target is not None
    candidates = {"ground truth": f"gt{target}/{name}" if paired else f"gt/{name}"}
    if source and source != target:
        candidates["input"] = f"gt{source}/{name}"
    for label, cell in cells.items():
        folder = cell["details"]["cell_dir"]
        for role, rel in candidates.items():
            if role not in column.images and (data.output_dir / folder / rel).exists():
                column.images[role] = f"{folder}/{rel}"
        if (data.output_dir / folder / task / name).exists():
            column.images[label] = f"{folder}/{task}/{name}"
    return column


def _item_values(
    data: StoredResults, cells: dict[str, dict[str, Any]], task: str, metric: str, item_id: str
) -> dict[str, str]:
    values = {}
    for label, cell in cells.items():
        value = (_per_file(data, cell, task, metric) or {}).get(item_id)
        if isinstance(value, int | float) and math.isfinite(value):
            values[label] = f"{value:.4g}"
    return values
