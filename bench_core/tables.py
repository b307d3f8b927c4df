"""Leaderboard tables from stored rows: one per dataset and task, models x metrics.

Each value is the mean over seeds of the per-seed value, with the spread over seeds
when there are several and the spread over test items otherwise (marked as such). The
best value per column is marked only among rows whose metric settings agree, so numbers
computed differently are never ranked against each other. HTML, Markdown and LaTeX all
render these same objects, so the three show the same numbers.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

_TASK_ORDER = {"recon": 0, "A2A": 1, "B2B": 2, "A2B": 3, "B2A": 4, "sample": 5, "train": 8, "model": 9}


@dataclass
class Aggregate:
    """One table cell: a metric of a model on a dataset and task, over seeds."""

    mean: float
    spread: float | None
    spread_over: str  # "seeds" | "items" | ""
    n_seeds: int
    n_items: int | None
    settings_key: str
    best: bool = False

    def text(self, digits: int = 4) -> str:
        """``mean ± spread`` with ``digits`` significant digits."""
        if self.mean is None or (isinstance(self.mean, float) and math.isnan(self.mean)):
            return "n/a"
        body = _fmt(self.mean, digits)
        if self.spread is not None:
            body += f" ± {_fmt(self.spread, 2)}"
        return body


@dataclass
class Table:
    """A leaderboard for one dataset and task."""

    dataset: str
    task: str
    metrics: list[tuple[str, bool | None]]  # (name, higher_is_better)
    rows: dict[str, dict[str, Aggregate]] = field(default_factory=dict)
    incomparable: list[str] = field(default_factory=list)


def _fmt(x: float, digits: int) -> str:
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


def build_tables(results: list[dict[str, Any]]) -> list[Table]:
    """Aggregate stored result rows into one table per dataset and task."""
    grouped: dict[tuple[str, str], dict[str, dict[str, list[dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    directions: dict[tuple[str, str, str], bool | None] = {}
    for row in results:
        grouped[(row["dataset"], row["task"])][row["model"]][row["metric"]].append(row)
        directions[(row["dataset"], row["task"], row["metric"])] = row["higher_is_better"]
    tables = []
    for (dataset, task), by_model in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], _TASK_ORDER.get(kv[0][1], 7), kv[0][1])
    ):
        names = sorted({m for metrics in by_model.values() for m in metrics})
        table = Table(dataset, task, [(m, directions[(dataset, task, m)]) for m in names])
        for model, metrics in sorted(by_model.items()):
            table.rows[model] = {m: _aggregate(rows) for m, rows in metrics.items()}
        _mark_best(table)
        tables.append(table)
    return tables


def _aggregate(rows: list[dict]) -> Aggregate:
    values = [r["value"] for r in rows if r["value"] is not None]
    settings_keys = {json.dumps(_comparable_settings(r["settings"]), sort_keys=True) for r in rows}
    mean = statistics.fmean(values) if values else float("nan")
    if len(values) > 1:
        spread, over = statistics.stdev(values), "seeds"
    elif rows and rows[0].get("std") is not None:
        spread, over = rows[0]["std"], "items"
    else:
        spread, over = None, ""
    n_items = rows[0].get("n") if rows else None
    key = settings_keys.pop() if len(settings_keys) == 1 else "mixed"
    return Aggregate(mean, spread, over, len(values), n_items, key)


def _comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    # Counters of clamped values describe the data, not the metric; they do not split rankings.
    return {k: v for k, v in settings.items() if k not in ("pred_clamped", "pred_values", "clamped")}


def _mark_best(table: Table) -> None:
    for metric, higher in table.metrics:
        if higher is None:
            continue
        cells = [(model, agg) for model, aggs in table.rows.items() if (agg := aggs.get(metric)) is not None]
        keys = {agg.settings_key for _, agg in cells}
        if len(keys) > 1 or "mixed" in keys:
            table.incomparable.append(metric)
            continue
        finite = [(m, a) for m, a in cells if a.mean is not None and math.isfinite(a.mean)]
        if len(finite) < 1:
            continue
        best = max(a.mean for _, a in finite) if higher else min(a.mean for _, a in finite)
        for _, agg in finite:
            agg.best = agg.mean == best


def to_markdown(tables: list[Table]) -> str:
    """The tables as GitHub Markdown, best values in bold."""
    out = []
    for t in tables:
        out.append(f"### {t.dataset} / {t.task}\n")
        header = ["model"] + [f"{m} {_arrow(h)}".strip() for m, h in t.metrics]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for model, aggs in t.rows.items():
            cells = [_md_cell(aggs.get(m)) for m, _ in t.metrics]
            out.append("| " + " | ".join([model, *cells]) + " |")
        if t.incomparable:
            out.append(f"\nNot ranked (settings differ between rows): {', '.join(t.incomparable)}")
        out.append("")
    return "\n".join(out)


def to_latex(tables: list[Table]) -> str:
    """The tables as LaTeX ``tabular`` environments (booktabs), best values in bold."""
    out = []
    for t in tables:
        cols = "l" + "r" * len(t.metrics)
        out.append(f"% {t.dataset} / {t.task}")
        out.append(f"\\begin{{tabular}}{{{cols}}}\n\\toprule")
        header = ["model"] + [f"{_tex(m)} {_tex_arrow(h)}".strip() for m, h in t.metrics]
        out.append(" & ".join(header) + r" \\ \midrule")
        for model, aggs in t.rows.items():
            cells = [_tex_cell(aggs.get(m)) for m, _ in t.metrics]
            out.append(" & ".join([_tex(model), *cells]) + r" \\")
        out.append("\\bottomrule\n\\end{tabular}\n")
    return "\n".join(out)


def _arrow(higher: bool | None) -> str:
    return "" if higher is None else ("↑" if higher else "↓")


def _tex_arrow(higher: bool | None) -> str:
    return "" if higher is None else ("$\\uparrow$" if higher else "$\\downarrow$")


def _md_cell(agg: Aggregate | None) -> str:
    if agg is None:
        return "–"
    return f"**{agg.text()}**" if agg.best else agg.text()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def _tex_cell(agg: Aggregate | None) -> str:
    if agg is None:
        return "--"
    body = agg.text().replace("±", r"$\pm$")
    return f"\\textbf{{{body}}}" if agg.best else body
