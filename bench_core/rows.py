"""Result rows: one typed row per stored number, and the only place rows are built.

A :class:`ResultRow` is what a cell produces (task, metric, value, kind, settings,
counters, provenance) and, once the store has written it, also says where it belongs
(run, cell, suite, model, dataset, seed). The evaluator, the runner and the store build
rows only through the functions below; tables, the report, export and compare read the
same type back from the store (:meth:`ResultRow.from_stored`).

Settings and counters are kept apart. ``settings`` are the choices that change a number
(data range, window, preset...); values whose settings differ are never ranked together.
``counters`` describe the data a number was computed on (predictions clamped into the data
range, negative eigenvalues clipped); they never split a ranking. Metric plugins report theirs
in ``MetricValue.counters``; the engine adds its own (predictions clamped). Stores written
before counters had a column of their own, and metric plugins written before
``MetricValue.counters`` that still report counts in ``settings()``, are read the same way:
the counter names of :data:`COUNTERS` are moved out of the settings by :func:`split_counters`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench_core.metric_reading import metric_reading
from bench_core.stats import bootstrap_ci

ROW_KINDS = ("metric", "throughput", "memory", "training", "model", "baseline", "diagnostic")
"""What a results row is: a metric plugin's value, an engine timing, peak memory, a training counter,
a model's own evaluation metric, a baseline's metric value, or a diagnostic (e.g. input dependence)."""

COUNTERS = frozenset({"pred_clamped", "pred_values", "clamped", "clamped_values", "negative_eigenvalues_clipped"})
"""Counter names found in settings: older stores' rows, metric plugins written before ``MetricValue.counters``."""

INPUT_DEPENDENCE_FLAG = 0.05
"""Below this ratio of output spread to target spread, a task's output does not depend on its input."""


@dataclass(frozen=True, kw_only=True)
class ResultRow:
    """One stored number. Item access (``row["value"]``) reads the field of that name, as for a stored dict."""

    run_id: str = ""
    cell_key: str = ""
    suite: str = ""
    model: str = ""
    dataset: str = ""
    seed: int = 0
    task: str
    metric: str
    value: float | None
    std: float | None = None
    n: int | None = None
    higher_is_better: bool | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    created: float = 0.0
    ci_low: float | None = None
    ci_high: float | None = None
    kind: str = "metric"
    counters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ROW_KINDS:
            raise ValueError(f"result row {self.task}/{self.metric}: kind {self.kind!r} is not one of {ROW_KINDS}")

    def __getitem__(self, name: str) -> Any:
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        """The field ``name``, or ``default`` when there is no such field."""
        return getattr(self, name) if name in _FIELDS else default

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict of the store's columns (lifecycle hooks and exports get this)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def replace(self, **changes: Any) -> ResultRow:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def with_provenance(self, **extra: Any) -> ResultRow:
        """A copy whose provenance also holds ``extra``."""
        return dataclasses.replace(self, provenance={**self.provenance, **extra})

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> ResultRow:
        """A row from a stored (decoded) dict; counters kept in its settings by older stores are moved out."""
        settings, counters = split_counters(stored.get("settings") or {})
        higher = stored.get("higher_is_better")
        known = {k: v for k, v in stored.items() if k in _FIELDS and v is not None}
        known.update(settings=settings, counters={**counters, **(stored.get("counters") or {})})
        known.update(value=stored.get("value"), higher_is_better=None if higher is None else bool(higher))
        return cls(**known)


_FIELDS = tuple(f.name for f in dataclasses.fields(ResultRow))


def as_row(row: ResultRow | Mapping[str, Any]) -> ResultRow:
    """``row`` as a :class:`ResultRow` (a stored dict is converted)."""
    return row if isinstance(row, ResultRow) else ResultRow.from_stored(row)


def split_counters(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, counters)``: the counter names of :data:`COUNTERS` moved out of ``settings``."""
    kept = {k: v for k, v in settings.items() if k not in COUNTERS}
    counters = {k: v for k, v in settings.items() if k in COUNTERS}
    return kept, counters


# -- builders: every row of a cell is made by one of these ------------------------------------
def metric_rows(task: str, computed: Any, counters: Mapping[str, Any]) -> list[ResultRow]:
    """A metric plugin's value of ``task`` as rows: the headline, then one per component (``name.part``).

    ``computed`` is a :class:`bench_core.feeder.Computed`; each row's counters are its value's
    ``MetricValue.counters`` and ``counters``, the engine's counts for the task (clamped
    predictions). The headline row carries the seeded bootstrap 95% interval of the mean over
    the per-item values, when the metric returned any.
    """
    cls, value = computed.cls, computed.value
    reading = metric_reading(cls)  # stored, so the report reads a metric as its plugin says
    parts = [(computed.name, value)] + [(f"{computed.name}.{k}", v) for k, v in value.components.items()]
    rows = []
    for name, part in parts:
        settings, own = split_counters(part.settings)
        rows.append(ResultRow(
            task=task, metric=name, value=part.value, std=part.std, n=part.n,
            higher_is_better=cls.higher_is_better, settings=settings,
            counters={**own, **part.counters, **counters},
            provenance={"plugin": computed.name, "version": cls.version, "description": reading.description,
                        "headline": reading.headline and name == computed.name},  # components never lead
        ))  # fmt: skip
    ci = bootstrap_ci(list(computed.per_item.values())) if computed.per_item else None
    if ci is not None:
        rows[0] = rows[0].replace(ci_low=ci[0], ci_high=ci[1])
    return rows


def input_dependence_row(task: str, output_spread: float, target_spread: float, n: int) -> ResultRow:
    """The diagnostic row of a task: output spread over target spread across test items."""
    ratio = output_spread / target_spread if target_spread > 0 else float("nan")
    return ResultRow(
        task=task, metric="input_dependence", value=ratio, n=n, kind="diagnostic", provenance=_engine(),
        settings={"definition": "RMS over pixels of the per-pixel std across test items, outputs / targets",
                  "flag_below": INPUT_DEPENDENCE_FLAG, "output_spread": output_spread, "target_spread": target_spread},
    )  # fmt: skip


def throughput_row(task: str, metric: str, value: float | None, n: int, settings: Mapping[str, Any]) -> ResultRow:
    """Items per second as a throughput row; ``settings`` say how it was timed (``protocol``, device...)."""
    return ResultRow(
        task=task, metric=metric, value=value, n=n, higher_is_better=True, kind="throughput",
        settings=dict(settings), provenance=_engine(),
    )  # fmt: skip


def stage_rows(stage: str, report: Any, device: str, precision: str, batch_size: int) -> list[ResultRow]:
    """The rows of a training stage's :class:`bench_core.trainer.StageReport`.

    Peak memory; images per second (when timed); updates skipped (with the fp16 overflows among
    them); and, under fp16, where the loss scale ended.
    """
    rows = [ResultRow(
        task="train", metric=f"{stage}.peak_memory_mb", value=report.peak_memory_mb, higher_is_better=False,
        kind="memory", provenance=_engine(),
        settings={"measure": report.memory_measure, "device": device, "batch_size": batch_size},
    )]  # fmt: skip
    if report.images_per_second:
        rows.append(throughput_row(
            "train", f"{stage}.images_per_s", report.images_per_second, report.steps,
            {"batch_size": batch_size, "device": device, "precision": precision,
             "protocol": f"per optimiser update: {report.timing_protocol}"},
        ))  # fmt: skip
    rows.append(ResultRow(
        task="train", metric=f"{stage}.skipped_updates", value=float(report.skipped + report.overflow_skipped),
        n=report.steps, kind="training", provenance=_engine(),
        settings={"skipped": report.skipped, "overflow_skipped": report.overflow_skipped,
                  "meaning": "updates not applied: non-finite loss or gradients, or a norm over the skip "
                             "threshold; overflow_skipped: fp16 loss-scale back-offs"},
    ))  # fmt: skip
    if report.grad_scale is not None:
        rows.append(ResultRow(
            task="train", metric=f"{stage}.grad_scale", value=report.grad_scale, n=report.steps, kind="training",
            provenance=_engine(), settings={"min_during_stage": report.grad_scale_min},
        ))  # fmt: skip
    return rows


def model_rows(values: Mapping[str, float], plugin: str) -> list[ResultRow]:
    """A model's own ``evaluation_metrics`` (ELBO, codebook usage...) as rows of task ``model``."""
    return [ResultRow(task="model", metric=name, value=float(value), kind="model", provenance={"plugin": plugin})
            for name, value in values.items()]  # fmt: skip


def baseline_row(row: ResultRow, baseline: Mapping[str, Any]) -> ResultRow:
    """A metric row of a baseline: kind ``baseline``, the baseline's settings in its provenance.

    The metric's settings stay the metric's, so the row compares with the models' rows.
    """
    return row.replace(kind="baseline", provenance={**row.provenance, "baseline": dict(baseline)})


def _engine() -> dict[str, str]:
    return {"plugin": "engine"}
