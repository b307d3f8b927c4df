"""Leaderboard tables from stored rows: one per dataset and task, models x metrics.

Each value is the mean over seeds of the per-seed value, with the spread over seeds
when there are several and the spread over test items otherwise (marked as such), and a
seeded bootstrap 95% interval of the mean: over seeds when there are at least two, else
over the per-item values of the one seed when the evaluator stored them. The best value
per column is marked only among rows whose metric settings agree, so numbers computed
differently are never ranked against each other. Whether another row differs from the best
is a paired question (the models of a dataset are scored on the same test items): per column,
a Wilcoxon signed-rank test of each row against the best, on the per-item values of single-
seed cells or on the per-seed values when both have several seeds, Holm-corrected across the
column; a row not significantly different at 0.05 is marked as a tie. Where no paired test
is possible (a distribution metric of one seed), a row whose interval overlaps the best's is
a tie. HTML, Markdown and LaTeX all render these same objects with the same
formatting methods, so the three show the same numbers.

Tables are read against references. Baseline rows (``kind = "baseline"``: the mean
training image, the input itself, the nearest training item) sit in the table of every
task they can do, are never ranked, and a model whose interval does not beat the
``mean-image`` baseline on a ranked metric with intervals on both sides is flagged
"below baseline". Diagnostic rows
(``kind = "diagnostic"``) are not columns: an ``input_dependence`` under its stored
threshold flags the model's row as not depending on its input, with the model's own
``collapsed*`` counts beside it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench_core.rows import ResultRow, as_row
from bench_core.stats import SIGNIFICANCE, bootstrap_ci, holm, overlaps, wilcoxon_p

_TASK_ORDER = {"recon": 0, "A2A": 1, "B2B": 2, "A2B": 3, "B2A": 4, "sample": 5, "train": 8, "model": 9}

PerItem = Mapping[tuple[str, str, str], Mapping[str, float]]
"""Per-item values (item id -> value, in id order) keyed by (cell_key, task, metric), from the eval.json files."""

PAIRED_TEST = "Wilcoxon signed-rank"


@dataclass
class PairedTest:
    """A row's paired test against the best of its column.

    ``over`` says what was paired: ``"items"`` (the per-item values of one seed each, paired by
    item id) or ``"seeds"`` (per-seed values, paired by seed); ``n`` the number of pairs.
    """

    over: str
    n: int
    p: float
    p_holm: float = float("nan")  # Holm-corrected across the column's tests

    def text(self) -> str:
        """What a reader sees when hovering the value."""
        what = "per-item values" if self.over == "items" else "per-seed values"
        verdict = "not significantly different from" if self.p_holm >= SIGNIFICANCE else "significantly different from"
        return (f"{verdict} the best ({PAIRED_TEST} on {what}, n={self.n}: p={self.p:.3g}, "
                f"Holm-corrected p={self.p_holm:.3g})")  # fmt: skip


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
    values: list[float] = field(default_factory=list)  # one per seed, in seed order
    seeds: list[int] = field(default_factory=list)
    ci: tuple[float, float] | None = None
    ci_over: str = ""  # "seeds" | "items" | ""
    tie: bool = False  # not the best, but not significantly different from it (see PairedTest)
    test: PairedTest | None = None  # against the best of its column; None when no paired test was possible
    items: Mapping[str, float] | None = None  # per-item values of a one-seed aggregate, by item id
    settings: dict[str, Any] = field(default_factory=dict)
    below_baseline: bool = False  # its interval does not beat the mean-image baseline

    def text(self, digits: int = 4) -> str:
        """``mean ± spread`` with ``digits`` significant digits; ``unavailable`` for a metric that said so."""
        if self.mean is None or (isinstance(self.mean, float) and math.isnan(self.mean)):
            # A metric that cannot run here (FID without its weights) stores NaN and its reason.
            return "unavailable" if self.settings.get("status") == "unavailable" else "n/a"
        body = fmt_number(self.mean, digits)
        if self.spread is not None:
            body += f" ± {fmt_number(self.spread, 2)}"
        return body

    def ci_text(self, digits: int = 4) -> str:
        """The 95% interval as ``[lo, hi]``, or ``n/a`` when there was nothing to resample."""
        if self.ci is None:
            return "n/a"
        return f"[{fmt_number(self.ci[0], digits)}, {fmt_number(self.ci[1], digits)}]"

    def n_text(self) -> str:
        """``n=seeds`` or ``n=seeds×items``."""
        return f"n={self.n_seeds}" + (f"×{self.n_items}" if self.n_items else "")

    @property
    def sort_value(self) -> float | None:
        """The mean when finite (the value tables sort by), else ``None``."""
        return self.mean if self.mean is not None and math.isfinite(self.mean) else None


@dataclass
class Table:
    """A leaderboard for one dataset and task."""

    dataset: str
    task: str
    metrics: list[tuple[str, bool | None]]  # (name, higher_is_better)
    rows: dict[str, dict[str, Aggregate]] = field(default_factory=dict)
    incomparable: list[str] = field(default_factory=list)
    tests: dict[str, str] = field(default_factory=dict)  # metric -> which paired test its ties come from
    why: dict[str, str] = field(default_factory=dict)  # incomparable metric -> which settings differ, and how
    baselines: dict[str, dict[str, Aggregate]] = field(default_factory=dict)  # label -> metric -> value
    flags: dict[str, list[str]] = field(default_factory=dict)  # model -> what a reader must know about its row


def fmt_number(x: float, digits: int) -> str:
    """``x`` with ``digits`` significant digits (one decimal from ``10**(digits-1)`` up): the one number format."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


def task_rank(task: str) -> int:
    """Where ``task`` sits among a dataset's tables (reconstruction, translation, sampling, training, model)."""
    return _TASK_ORDER.get(task, 7)


def build_tables(
    results: Iterable[ResultRow | Mapping[str, Any]],
    per_item: PerItem | None = None,
    metric_rank: Callable[[str], int] | None = None,
) -> list[Table]:
    """Aggregate stored result rows into one table per dataset and task.

    Args:
        results: rows as returned by :meth:`ResultsStore.results` (stored dicts are read as rows too).
        per_item: optional per-item values, used for the interval of single-seed cells.
        metric_rank: the columns' order (e.g. ``StoredResults.metric_rank``: the suite's metrics in
            the order its file lists them); columns of equal rank, and all without it, by name.
    """
    grouped: dict[tuple[str, str], dict[str, dict[str, list[ResultRow]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    baselines: dict[tuple[str, str], dict[str, dict[str, list[ResultRow]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    diagnostics: dict[tuple[str, str, str], list[ResultRow]] = defaultdict(list)
    directions: dict[tuple[str, str, str], bool | None] = {}
    for row in map(as_row, results):
        if row.kind == "diagnostic":
            diagnostics[(row.dataset, row.task, row.model)].append(row)
            continue
        target = baselines if row.kind == "baseline" else grouped
        label = row.model.removeprefix("baseline:") if row.kind == "baseline" else row.model
        target[(row.dataset, row.task)][label][row.metric].append(row)
        directions.setdefault((row.dataset, row.task, row.metric), row.higher_is_better)
    collapsed = _collapse_notes(grouped)
    rank = metric_rank or (lambda _: 0)
    tables = []
    for (dataset, task), by_model in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], task_rank(kv[0][1]), kv[0][1])
    ):
        names = sorted({m for metrics in by_model.values() for m in metrics}, key=lambda m: (rank(m), m))
        table = Table(dataset, task, [(m, directions[(dataset, task, m)]) for m in names])
        for model, metrics in sorted(by_model.items()):
            table.rows[model] = {m: aggregate(rows, per_item) for m, rows in metrics.items()}
        for label, metrics in sorted(baselines.get((dataset, task), {}).items()):
            table.baselines[label] = {m: aggregate(rows, per_item) for m, rows in metrics.items() if m in names}
        _mark_best(table, by_model)
        for model in table.rows:
            _flag_row(table, model, diagnostics.get((dataset, task, model), []), collapsed.get((dataset, model)))
        tables.append(table)
    return tables


REFERENCE_BASELINE = "mean-image"
"""The baseline a model must beat: it knows nothing about the input."""


def _collapse_notes(grouped) -> dict[tuple[str, str], str]:
    """Per (dataset, model): the model's own ``collapsed*`` counts that are above zero, as text."""
    notes = {}
    for (dataset, task), by_model in grouped.items():
        if task != "model":
            continue
        for model, metrics in by_model.items():
            parts = [f"{m} = {rows[0].value:g}" for m, rows in sorted(metrics.items())
                     if m.startswith("collapsed") and rows[0].value]  # fmt: skip
            if parts:
                notes[(dataset, model)] = ", ".join(parts)
    return notes


def _beats(agg: Aggregate, reference: Aggregate, higher: bool) -> bool:
    """Whether ``agg``'s interval (its mean without one) lies entirely on the better side of the reference."""
    low, high = agg.ci or (agg.mean, agg.mean)
    return low > reference.mean if higher else high < reference.mean


def _flag_row(table: Table, model: str, diagnostics: list[ResultRow], collapsed: str | None) -> None:
    flags = []
    reference = table.baselines.get(REFERENCE_BASELINE, {})
    below = []
    for metric, higher in table.metrics:
        agg, ref = table.rows[model].get(metric), reference.get(metric)
        # Only metrics with an interval on both sides (per-item values, or seeds): a distribution
        # metric (FID, SWD) of one run has no spread to say whether a difference is real.
        if higher is None or agg is None or ref is None or agg.ci is None or ref.ci is None:
            continue
        if agg.settings_key == ref.settings_key and not _beats(agg, ref, higher):
            agg.below_baseline = True
            below.append(metric)
    if below:
        flags.append(f"below the {REFERENCE_BASELINE} baseline on {', '.join(below)}")
    for row in diagnostics:
        threshold = row.settings.get("flag_below")
        value = row.value
        if row.metric == "input_dependence" and threshold is not None and value is not None and value < threshold:
            where = f"seed {row.seed}" + (f"; {collapsed}" if collapsed else "")
            flags.append(f"output does not depend on the input (output/target spread {value:.3g}, {where})")
    if flags:
        table.flags[model] = flags


def aggregate(rows: Iterable[ResultRow], per_item: PerItem | None = None) -> Aggregate:
    """One model's rows of one metric (a row per seed) as an :class:`Aggregate`."""
    rows = sorted(rows, key=lambda r: r.seed)
    kept = [r for r in rows if r.value is not None]
    values = [r.value for r in kept]
    settings_keys = {json.dumps(r.settings, sort_keys=True) for r in rows}
    mean = statistics.fmean(values) if values else float("nan")
    if len(values) > 1:
        spread, over = statistics.stdev(values), "seeds"
    elif rows and rows[0].std is not None:
        spread, over = rows[0].std, "items"
    else:
        spread, over = None, ""
    n_items = rows[0].n if rows else None
    key = settings_keys.pop() if len(settings_keys) == 1 else "mixed"
    agg = Aggregate(mean, spread, over, len(values), n_items, key)
    agg.values = values
    agg.seeds = [r.seed for r in kept]
    agg.settings = dict(rows[0].settings) if rows else {}
    if len(values) > 1:
        agg.ci, agg.ci_over = bootstrap_ci(values), "seeds"
    elif len(kept) == 1 and kept[0].ci_low is not None and kept[0].ci_high is not None:
        agg.ci, agg.ci_over = (kept[0].ci_low, kept[0].ci_high), "items"  # stored at evaluation
    if len(kept) == 1 and per_item is not None:
        agg.items = per_item.get((kept[0].cell_key, kept[0].task, kept[0].metric))
        # Stores written before intervals were stored: the interval from the per-item values.
        ci = bootstrap_ci(list(agg.items.values())) if agg.ci is None and agg.items is not None else None
        if ci is not None:
            agg.ci, agg.ci_over = ci, "items"
    return agg


def _mark_best(table: Table, by_model: dict[str, dict[str, list[ResultRow]]]) -> None:
    for metric, higher in table.metrics:
        if higher is None:
            continue
        cells = [(model, agg) for model, aggs in table.rows.items() if (agg := aggs.get(metric)) is not None]
        keys = {agg.settings_key for _, agg in cells}
        if len(keys) > 1 or "mixed" in keys:
            table.incomparable.append(metric)
            table.why[metric] = _explain([(m, r) for m, metrics in by_model.items() for r in metrics.get(metric, [])])
            continue
        finite = [a for _, a in cells if a.sort_value is not None]
        if not finite:
            continue
        best = max(a.mean for a in finite) if higher else min(a.mean for a in finite)
        leader = next(a for a in finite if a.mean == best)
        for agg in finite:
            agg.best = agg.mean == best
            # Without a paired test a tie needs an interval on at least one side; two bare points tie
            # only if equal (then both are best).
            agg.tie = not agg.best and overlaps(agg.ci or (agg.mean, agg.mean), leader.ci or (leader.mean, leader.mean))
        _paired_ties(table, metric, leader, [a for a in finite if not a.best])


def _paired_ties(table: Table, metric: str, leader: Aggregate, others: list[Aggregate]) -> None:
    """Test each of ``others`` against the column's best; Holm-correct the column; ties are the non-significant."""
    tested = [(agg, test) for agg in others if (test := paired_test(agg, leader)) is not None]
    for (agg, test), adjusted in zip(tested, holm([t.p for _, t in tested]), strict=True):
        test.p_holm = adjusted
        agg.test, agg.tie = test, adjusted >= SIGNIFICANCE
    kinds = sorted({"per-item values" if t.over == "items" else "per-seed values" for _, t in tested})
    if kinds:
        plural = "s" if len(tested) != 1 else ""
        table.tests[metric] = (f"{PAIRED_TEST} against the best on {' and '.join(kinds)}, "
                               f"Holm-corrected over {len(tested)} comparison{plural}")  # fmt: skip


def paired_test(agg: Aggregate, best: Aggregate) -> PairedTest | None:
    """``agg`` against ``best``: per-seed values when both have several seeds, else per-item values of one seed each.

    Pairs are matched by seed or by item id; ``None`` when fewer than two pairs exist.
    """
    if len(agg.values) > 1 and len(best.values) > 1:
        mine, theirs = dict(zip(agg.seeds, agg.values, strict=True)), dict(zip(best.seeds, best.values, strict=True))
        over = "seeds"
    elif agg.items is not None and best.items is not None and len(agg.values) == len(best.values) == 1:
        mine, theirs, over = agg.items, best.items, "items"
    else:
        return None
    common = sorted(set(mine) & set(theirs))
    result = wilcoxon_p([mine[k] for k in common], [theirs[k] for k in common])
    return None if result is None else PairedTest(over, result[1], result[0])


def _explain(rows: list[tuple[str, ResultRow]]) -> str:
    """Which settings differ between ``rows`` ((model, row) pairs) and who used which value."""
    settings = [(model, f"seed{r.seed}", r.settings) for model, r in rows]
    keys = sorted({k for _, _, s in settings for k in s})
    parts = []
    for key in keys:
        users: dict[str, list[str]] = defaultdict(list)
        for model, seed, s in settings:
            value = json.dumps(s[key], sort_keys=True, default=str) if key in s else "unset"
            label = model if len(rows) == len({m for m, _ in rows}) else f"{model}/{seed}"
            if label not in users[value]:
                users[value].append(label)
        if len(users) > 1:
            parts.append(f"{key}: " + "; ".join(f"{v} ({', '.join(who)})" for v, who in users.items()))
    return " | ".join(parts) or "settings differ"


def to_markdown(tables: list[Table]) -> str:
    """The tables as GitHub Markdown, best values in bold."""
    out = [_LEGEND, ""]
    for t in tables:
        out.append(f"### {t.dataset} / {t.task}\n")
        header = ["model"] + [f"{m} {arrow(h)}".strip() for m, h in t.metrics]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for model, aggs in t.rows.items():
            cells = [_md_cell(aggs.get(m)) for m, _ in t.metrics]
            out.append("| " + " | ".join([_md_escape(model), *cells]) + " |")
        for name, aggs in t.baselines.items():
            cells = [_md_cell(aggs.get(m)) for m, _ in t.metrics]
            out.append("| " + " | ".join([f"*{_md_escape(name)} (baseline)*", *cells]) + " |")
        out += [f"\n⚑ {_md_escape(model)}: {_md_escape('; '.join(flags))}" for model, flags in t.flags.items()]
        if t.incomparable:
            out.append(f"\nNot ranked (settings differ between rows): {', '.join(t.incomparable)}")
            out += [f"- {m}: {t.why[m]}" for m in t.incomparable]
        out.append("")
    return "\n".join(out)


_LEGEND = (
    "Values: mean ± σ over seeds († σ over test items, when one seed) [bootstrap 95% CI of the mean]; "
    "bold: best in column; ≈: not significantly different from the best (paired Wilcoxon signed-rank, "
    "Holm-corrected, 0.05; interval overlap where no paired test is possible); "
    "▽: does not beat the mean-image baseline; baseline rows are never ranked."
)


def to_latex(tables: list[Table]) -> str:
    """The tables as LaTeX ``tabular`` environments (booktabs), best values in bold."""
    out = ["% " + _LEGEND.replace("%", r"\%")]
    for t in tables:
        cols = "l" + "r" * len(t.metrics)
        out.append(f"% {t.dataset} / {t.task}")
        out.append(f"\\begin{{tabular}}{{{cols}}}\n\\toprule")
        header = ["model"] + [f"{_tex(m)} {_tex_arrow(h)}".strip() for m, h in t.metrics]
        out.append(" & ".join(header) + r" \\ \midrule")
        for model, aggs in t.rows.items():
            cells = [_tex_cell(aggs.get(m)) for m, _ in t.metrics]
            out.append(" & ".join([_tex(model), *cells]) + r" \\")
        if t.baselines:
            out.append(r"\midrule")
        for name, aggs in t.baselines.items():
            cells = [_tex_cell(aggs.get(m)) for m, _ in t.metrics]
            out.append(" & ".join([f"\\textit{{{_tex(name)} (baseline)}}", *cells]) + r" \\")
        out.append("\\bottomrule\n\\end{tabular}")
        out += [f"% flag, {_tex(model)}: {_tex('; '.join(flags))}" for model, flags in t.flags.items()]
        out += [f"% not ranked, {_tex(m)}: {_tex(t.why[m])}" for m in t.incomparable]
        out.append("")
    return "\n".join(out)


def arrow(higher: bool | None) -> str:
    """↑ for higher-is-better metrics, ↓ for lower, nothing when unranked."""
    return "" if higher is None else ("↑" if higher else "↓")


def _tex_arrow(higher: bool | None) -> str:
    return "" if higher is None else ("$\\uparrow$" if higher else "$\\downarrow$")


def _md_escape(text: str) -> str:
    # A pipe would end the cell; angle brackets would be raw HTML in most Markdown renderers.
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(agg: Aggregate | None) -> str:
    if agg is None:
        return "–"
    body = f"**{agg.text()}**" if agg.best else agg.text()
    if agg.spread_over == "items":
        body += "†"
    if agg.ci is not None:
        body += f" {agg.ci_text()}"
    return body + (" ≈" if agg.tie else "") + (" ▽" if agg.below_baseline else "")


_TEX = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def _tex(text: str) -> str:
    # Character by character, so the braces of one replacement are never escaped by another.
    return "".join(_TEX.get(c, c) for c in text)


def _tex_cell(agg: Aggregate | None) -> str:
    if agg is None:
        return "--"
    body = agg.text().replace("±", r"$\pm$")
    body = f"\\textbf{{{body}}}" if agg.best else body
    if agg.spread_over == "items":
        body += r"$^\dagger$"
    if agg.ci is not None:
        body += f" {agg.ci_text()}"
    return body + (r" $\approx$" if agg.tie else "") + (r" $\triangledown$" if agg.below_baseline else "")
