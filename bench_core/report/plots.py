"""The report's plots, drawn by matplotlib as inline SVG: what a reader takes in by looking.

Per dataset and task: quality against throughput (the headline metric against images/s, one
point per model, baselines as horizontal lines, the Pareto front marked) and the per-item
paired comparison of the two best models (their per-item values against each other, with
the diagonal); per dataset: every model's training curves overlaid (loss against step).

The headline metric of a table is the first ranked metric plugin's column (in the table's
order: the suite's metric order, then by name) whose plugin declares it a headline (``headline``, stored in each row's
provenance; see :mod:`bench_core.metric_reading`), else its first ranked metric plugin's
column; a metric whose rows were computed with different settings is never plotted against
another model's.

Output is deterministic: a fixed style (DejaVu Sans, which matplotlib ships; no TeX, no
mathtext, so a ``$`` in a model name is a dollar sign), no date, a fixed hash salt. The SVG
is inlined in the page, so it is sanitised (:func:`sanitise_svg`): only drawing elements
are kept (no scripts, styles, links out or event handlers), every id gets a prefix unique on
the page, and text is escaped on output. matplotlib is imported on first use only, so
``bench --help`` never pays for it.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import statistics
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench_core.metric_reading import row_reading
from bench_core.results import THROUGHPUT_SUFFIX, StoredResults
from bench_core.rows import ResultRow
from bench_core.tables import Table, arrow

THROUGHPUT = THROUGHPUT_SUFFIX
"""The throughput column a table's Pareto view plots against: an evaluation task's, the suffix alone."""
MAX_CURVE_POINTS = 120
"""Points kept per training curve (evenly spaced, the last always kept): the SVG stays small."""
_LABEL_CHARS = 40
_SIZE = (7.2, 3.6)  # inches; at the SVG's 72 points per inch, 518 x 259
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#888888",
    "text.usetex": False,
    "text.parse_math": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "medgen-bench",
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
}
_MARKERS = "osD^vP*Xph"
_SVG = "http://www.w3.org/2000/svg"
_XLINK = "http://www.w3.org/1999/xlink"
_URL_REF = re.compile(r"url\(\s*#([\w.:-]+)\s*\)")
_KEPT = {"svg", "g", "defs", "path", "use", "clipPath", "rect", "line", "polyline", "polygon", "circle", "ellipse",
         "text", "tspan", "title", "desc"}  # fmt: skip


@dataclass
class Plot:
    """One plot of the report: a title, a line saying how to read it, and its sanitised inline SVG."""

    kind: str  # "pareto" | "paired" | "curves"
    title: str
    caption: str
    svg: str


def dataset_plots(data: StoredResults, tables: list[Table]) -> dict[str, list[Plot]]:
    """The plots of every dataset: per table a Pareto view and a paired comparison, then the training curves."""
    ids = itertools.count()
    plots: dict[str, list[Plot]] = defaultdict(list)
    for table in tables:
        metric = headline_metric(table, data.results)
        if metric is None:
            continue
        for plot in (pareto_plot(table, metric, f"plot{next(ids)}"),
                     paired_plot(table, metric, data, f"plot{next(ids)}")):  # fmt: skip
            if plot is not None:
                plots[table.dataset].append(plot)
    for dataset in sorted({c["dataset"] for c in data.cells}):
        plot = curves_plot([c for c in data.cells if c["dataset"] == dataset], dataset, f"plot{next(ids)}")
        if plot is not None:
            plots[dataset].append(plot)
    return dict(plots)


def headline_metric(table: Table, results: list[ResultRow]) -> str | None:
    """The metric ``table`` is read by: its first ranked headline metric, else its first ranked metric.

    Only metric plugins' columns count (not throughput, memory or a model's own numbers), and
    never one whose rows disagree on settings.
    """
    mine = [r for r in results if r.dataset == table.dataset and r.task == table.task and r.kind == "metric"]
    # By name too: stores written before rows had kinds hold throughput as kind "metric".
    plugins = {r.metric for r in mine if not r.metric.endswith(THROUGHPUT_SUFFIX)}
    ranked = [m for m, higher in table.metrics if higher is not None and m in plugins and m not in table.incomparable]
    heads = [m for m in ranked if any(row_reading(r.provenance, r.higher_is_better).headline
                                      for r in mine if r.metric == m)]  # fmt: skip
    return (heads or ranked or [None])[0]


def direction_text(higher: bool | None) -> str:
    """How a metric ranks, in words, with its arrow."""
    if higher is None:
        return "not ranked"
    return f"{arrow(higher)} {'higher' if higher else 'lower'} is better"


def pareto_front(points: list[tuple[float, float]], higher: bool) -> list[int]:
    """Indices of the points no other point dominates, by ascending x.

    x is throughput (higher is better); y is the metric, better when higher if ``higher``. A
    point is dominated when another is at least as good on both and strictly better on one.
    """
    sign = 1.0 if higher else -1.0

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and sign * a[1] >= sign * b[1] and (a[0] > b[0] or sign * a[1] > sign * b[1])

    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i][0])


# -- the three plots ----------------------------------------------------------------------------
def pareto_plot(table: Table, metric: str, uid: str) -> Plot | None:
    """``metric`` against images/s, one point per model (95% interval as a bar), baselines as lines."""
    higher = dict(table.metrics)[metric]
    models = [(model, aggs[THROUGHPUT].sort_value, aggs[metric]) for model, aggs in table.rows.items()
              if THROUGHPUT in aggs and metric in aggs]  # fmt: skip
    models = [(m, x, agg) for m, x, agg in models if x is not None and x > 0 and agg.sort_value is not None]
    left_out = [model for model in table.rows if model not in {m for m, _, _ in models}]
    if not models:
        return None
    front = pareto_front([(x, agg.mean) for _, x, agg in models], bool(higher))
    title = f"{table.dataset} / {table.task}: {metric} against throughput"
    with _figure() as (fig, ax):
        with_ci = [(x, agg.ci) for _, x, agg in models if agg.ci is not None]
        if with_ci:  # one collection for every interval: a bar per model costs a draw call each
            ax.vlines([x for x, _ in with_ci], [lo for _, (lo, _) in with_ci], [hi for _, (_, hi) in with_ci],
                      color="#777777", linewidth=0.8, gid="intervals")  # fmt: skip
        for i, (model, x, agg) in enumerate(models):
            colour = f"C{i % 10}"
            ax.plot([x], [agg.mean], linestyle="none", marker=_MARKERS[i // 10 % len(_MARKERS)], markersize=6,
                    color=colour, markerfacecolor=colour if i in front else "white", label=_short(model),
                    gid=f"point-{i}")  # fmt: skip
        ax.plot([models[i][1] for i in front], [models[i][2].mean for i in front], color="#555555",
                linestyle="-", linewidth=0.8, zorder=0, label="Pareto front", gid="front")  # fmt: skip
        for j, (name, aggs) in enumerate(table.baselines.items()):
            value = aggs[metric].sort_value if metric in aggs else None
            if value is not None:
                ax.axhline(value, color="#999999", linestyle=(0, (4, 2 + j)), linewidth=0.9,
                           label=f"{_short(name)} (baseline)", gid=f"baseline-{j}")  # fmt: skip
        xs = [x for _, x, _ in models]
        if max(xs) / min(xs) > 10:
            _log_axis(ax, "x")
        ax.set_xlabel(f"{table.task} throughput, images/s (↑ higher is better)")
        ax.set_ylabel(f"{metric} ({direction_text(higher)})")
        ax.set_title(title)
        svg = _render(fig, ax, uid, title)
    caption = (f"One point per model: the mean over seeds of {metric} and of images/s, with its 95% interval; "
               "filled points joined by the line form the Pareto front (no other model is both faster and "
               "better); horizontal lines are baselines, which have no throughput.")  # fmt: skip
    if left_out:
        caption += f" Not plotted (no throughput or no finite {metric}): {', '.join(left_out)}."
    return Plot("pareto", title, caption, svg)


def paired_plot(table: Table, metric: str, data: StoredResults, uid: str) -> Plot | None:
    """The two best models' per-item ``metric`` values against each other, with the diagonal."""
    higher = dict(table.metrics)[metric]
    ranked = [(agg.sort_value, model) for model, aggs in table.rows.items()
              if (agg := aggs.get(metric)) is not None and agg.sort_value is not None]  # fmt: skip
    ranked.sort(key=lambda vm: (-vm[0] if higher else vm[0], vm[1]))
    if len(ranked) < 2:
        return None
    (_, first), (_, second) = ranked[:2]
    a, b = (per_item_means(data, table.dataset, table.task, metric, m) for m in (first, second))
    common = sorted(set(a) & set(b))
    if not common:
        return None
    xs, ys = [a[k] for k in common], [b[k] for k in common]
    better_b = sum((y > x) if higher else (y < x) for x, y in zip(xs, ys, strict=True))
    better_a = sum((x > y) if higher else (x < y) for x, y in zip(xs, ys, strict=True))
    title = f"{table.dataset} / {table.task}: {metric} per test item, the two best models"
    with _figure(square=True) as (fig, ax):
        lo, hi = min(xs + ys), max(xs + ys)
        pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#999999", linewidth=0.8, gid="diagonal")
        ax.scatter(xs, ys, s=12, color="C0", alpha=0.7, linewidths=0, gid="items")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(f"{_short(first)}: {metric} ({direction_text(higher)})")
        ax.set_ylabel(f"{_short(second)}: {metric}")
        ax.set_title(title)
        svg = _render(fig, ax, uid, title)
    caption = (
        f"One point per test item ({len(common)} items; mean over seeds when there are several): "
        f"{first} (best mean) across, {second} (second) up. {second} is better on {better_b} items, "
        f"{first} on {better_a}, {len(common) - better_a - better_b} tie; points on the diagonal are equal."
    )
    if unmatched := len(set(a) ^ set(b)):
        caption += f" {unmatched} items with a value for only one of the two are left out."
    return Plot("paired", title, caption, svg)


def curves_plot(cells: list[dict[str, Any]], dataset: str, uid: str) -> Plot | None:
    """Every model's training loss against step on ``dataset``: a line per seed and stage, a colour per model."""
    lines = list(_curves(cells))
    if not lines:
        return None
    groups: dict[tuple[str, str], list[list[tuple[float, float]]]] = defaultdict(list)
    for model, stage, pts in lines:
        groups[(model, stage)].append(pts)
    stages_of: dict[str, list[str]] = defaultdict(list)
    for model, stage in groups:
        stages_of[model].append(stage)
    models = list(stages_of)
    values = [v for _, _, pts in lines for _, v in pts]
    title = f"{dataset}: training loss of every model"
    with _figure() as (fig, ax):
        from matplotlib.collections import LineCollection

        for k, ((model, stage), segments) in enumerate(groups.items()):
            i = models.index(model)  # one collection per model and stage: its seeds share colour and label
            label = _short(model) + (f" ({stage})" if len(stages_of[model]) > 1 else "")
            # Colours repeat after ten models, stages share a colour: the dash pattern tells them apart.
            style = ("-", "--", ":", "-.")[(i // 10 + stages_of[model].index(stage)) % 4]
            ax.add_collection(LineCollection(segments, colors=f"C{i % 10}", alpha=0.8, linestyles=style,
                                             label=label, gid=f"curve-{k}"))  # fmt: skip
        log = all(v > 0 for v in values) and max(values) / min(values) > 20
        if log:
            _log_axis(ax, "y")
        ax.autoscale_view()
        ax.set_xlabel("step (within its training stage)")
        ax.set_ylabel(f"training loss (↓ lower is better){', log scale' if log else ''}")
        ax.set_title(title)
        svg = _render(fig, ax, uid, title)
    caption = ("Loss against optimiser step of every model trained on this dataset, one line per seed (and per "
               "stage, for models trained in stages); losses of different models are their own objectives, so "
               "compare shapes and convergence rather than levels.")  # fmt: skip
    return Plot("curves", title, caption, svg)


def per_item_means(data: StoredResults, dataset: str, task: str, metric: str, model: str) -> dict[str, float]:
    """A model's per-item values of ``metric`` (its cells' eval.json), averaged over seeds, for items every seed has."""
    seeds = []
    for cell in data.cells:
        if cell["model"] == model and cell["dataset"] == dataset:
            entry = data.evals.get(cell["cell_key"], {}).get(task, {}).get(metric)
            if isinstance(entry, dict) and entry.get("per_file"):
                seeds.append(entry["per_file"])
    if not seeds:
        return {}
    common = set(seeds[0]).intersection(*seeds[1:])
    return {k: statistics.fmean(s[k] for s in seeds) for k in common if all(math.isfinite(s[k]) for s in seeds)}


def _curves(cells: list[dict[str, Any]]) -> Iterator[tuple[str, str, list[tuple[float, float]]]]:
    """(model, stage, [(step, loss)]) of every finished cell's stages with at least two finite losses."""
    for cell in sorted(cells, key=lambda c: (c["model"], c["seed"])):
        if cell["status"] != "done":
            continue
        for stage in cell["details"].get("stages") or []:
            pts = [(p["step"], p["loss"]) for p in stage.get("curve") or []
                   if isinstance(p.get("loss"), int | float) and math.isfinite(p["loss"])]  # fmt: skip
            if len(pts) >= 2:
                stride = math.ceil(len(pts) / MAX_CURVE_POINTS)
                yield cell["model"], str(stage.get("stage", "?")), pts[::stride] + ([pts[-1]] if stride > 1 else [])


def _log_axis(ax: Any, which: str) -> None:
    """Axis ``which`` ("x" or "y") log-scaled, with plain tick labels (matplotlib's are mathtext, off here)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _short(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"


# -- drawing and sanitising ---------------------------------------------------------------------
@contextmanager
def _figure(square: bool = False) -> Iterator[tuple[Any, Any]]:
    """A matplotlib figure and its axes under the fixed style, on an Agg canvas (no global backend change)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # matplotlib's defaults, not the user's matplotlibrc, under our few settings: the same SVG everywhere.
    with matplotlib.style.context(["default", _STYLE]):
        fig = Figure(figsize=(5.2, 4.2) if square else _SIZE, dpi=72)
        FigureCanvasAgg(fig)
        yield fig, fig.add_subplot()


def _render(fig: Any, ax: Any, uid: str, label: str) -> str:
    """The figure as sanitised SVG text, its legend to the right of the axes."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 + len(handles) // 16)
        fig.subplots_adjust(left=0.11, right=0.62 if len(handles) > 16 else 0.72, bottom=0.14, top=0.9)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return sanitise_svg(buf.getvalue(), uid, label)


def sanitise_svg(text: str, prefix: str, label: str) -> str:
    """``text`` (an SVG document) as markup safe to inline in a page.

    Only drawing elements are kept (no script, style, foreignObject, image, a, metadata);
    event-handler attributes and links other than in-document references are dropped; every
    id, and every reference to one, gets ``prefix-`` so ids stay unique on the page; the root
    gets ``role="img"``, ``aria-label`` (``label``) and scales to its container. Text and
    attribute values are escaped on serialisation.
    """
    ET.register_namespace("", _SVG)
    ET.register_namespace("xlink", _XLINK)
    root = ET.fromstring(text)
    for parent in root.iter():
        for child in list(parent):
            if _local(child.tag) not in _KEPT:
                parent.remove(child)
    for el in root.iter():
        for name, value in list(el.attrib.items()):
            local = _local(name).lower()
            if local.startswith("on") or (local == "href" and not value.startswith("#")):
                del el.attrib[name]
            elif local in ("id", "href"):
                el.set(name, ("#" if value.startswith("#") else "") + f"{prefix}-{value.lstrip('#')}")
            elif "url(" in value.lower():
                local_refs = _URL_REF.sub(rf"url(#{prefix}-\1)", value)
                if "url(" in _URL_REF.sub("", value).lower():  # a reference out of the page: dropped
                    del el.attrib[name]
                else:
                    el.set(name, local_refs)
    for size in ("width", "height"):
        root.attrib.pop(size, None)
    root.set("class", "plot")
    root.set("role", "img")
    root.set("aria-label", label)
    return ET.tostring(root, encoding="unicode")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
