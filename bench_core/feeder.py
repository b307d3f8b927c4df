"""The metric feeder: the metric plugins of one task, fed together and computed into results.

The idea of torchmetrics' ``MetricCollection``: one object holds a task's metric instances,
``update`` passes each batch (predictions and targets in ``[0, 1]``, with the items' ids) to
every metric and keeps the per-item values paired metrics return, ``compute`` gives each
metric's value with them, and ``rows`` turns that into result rows. Evaluation, validation
(checkpoint selection) and ``bench score`` all feed metrics through it, so a metric sees the
same calls in all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench_core.rows import ResultRow, metric_rows


@dataclass(frozen=True)
class Computed:
    """One metric's result: its name (as the suite writes it), class, value and per-item values (or ``None``)."""

    name: str
    cls: type
    value: Any  # bench_core.api.MetricValue
    per_item: dict[str, float] | None = None


def build_metric(cls: type, options: Mapping[str, Any], dims: int) -> Any:
    """A fresh instance of metric plugin ``cls`` for ``[0, 1]`` data of ``dims`` spatial dimensions."""
    return cls(data_range=1.0, dims=dims, **options)


class MetricFeeder:
    """Metric instances by name, updated together; per-item values kept by item id."""

    def __init__(self, metrics: Mapping[str, tuple[type, Any]]) -> None:
        """``metrics``: name -> (metric class, fresh instance)."""
        self.metrics = dict(metrics)
        self.per_item: dict[str, dict[str, float]] = {}

    def __bool__(self) -> bool:
        return bool(self.metrics)

    @property
    def needs_train(self) -> list[Any]:
        """The instances that compare with the training split (``needs_train``): they take ``update_train``."""
        return [metric for _, metric in self.metrics.values() if getattr(metric, "needs_train", False)]

    def update(self, pred: Any, target: Any, ids: Sequence[str]) -> None:
        """Feed a batch ``(N, C, *spatial)`` in ``[0, 1]`` to every metric; keep the per-item values returned."""
        for name, (_, metric) in self.metrics.items():
            values = metric.update(pred, target)
            if values is not None:
                per = self.per_item.setdefault(name, {})
                per.update(zip(ids, (float(v) for v in values.detach().cpu()), strict=True))

    def update_train(self, images: Any, ids: Sequence[str]) -> None:
        """Feed training images (``[0, 1]``) to the metrics that declare ``needs_train``."""
        for metric in self.needs_train:
            metric.update_train(images, list(ids))

    def compute(self) -> list[Computed]:
        """Every metric's value over everything fed since it was built, with its per-item values."""
        return [Computed(name, cls, metric.compute(), self.per_item.get(name))
                for name, (cls, metric) in self.metrics.items()]  # fmt: skip

    def rows(self, task: str, counters: Mapping[str, Any]) -> tuple[list[ResultRow], list[Computed]]:
        """Result rows of ``task`` (``counters``: the engine's counts for it), and what they were computed from."""
        computed = self.compute()
        return [row for result in computed for row in metric_rows(task, result, counters)], computed
